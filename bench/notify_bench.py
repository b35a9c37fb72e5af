"""Notify benchmark: a breach fan-out to N tenants x 2 contacts x 2 channels (email and WhatsApp) and a
policy-change campaign (email) to the same tenants, through the real delivery engine, a real OpenBao (sealed
contacts and payloads) and SQLite, into an aiosmtpd sink over mandatory STARTTLS and the Graph API stand-in, each
in its own process (as a relay and Meta's servers would be). Run with ``make bench`` or
``python -m bench.notify_bench``.

Figures: the declaration call (planning every delivery under its idempotency key, sealing its payload), the
fan-out until the sink and the stand-in hold every notice (per channel and in total), notices per second end to
end (target >= 300/s on the 2-core machine; the issue's fan-out is 1,000 tenants x 2 contacts x 2 channels,
``BENCH_BREACH_TENANTS``), the CPU seconds notify's process spent per notice (the sink, the stand-in and OpenBao
are other processes; on a shared machine this is steadier than wall time) and the Transit calls made while
sending. NATS is off (nothing in these paths uses it).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import Figures, print_table, run_benchmark, save_results

TENANTS = int(os.environ.get("BENCH_BREACH_TENANTS", "1000"))
CONTACTS = 2
CHANNELS = ("email", "whatsapp")
# The stand-in's access token and the breach notice's WhatsApp template (name -> body parameter count).
GRAPH_TOKEN = "bench-token"
WA_TEMPLATES = {"steward_breach_notice": 5}
# Deliveries the engine claims and sends concurrently per round.
BATCH = int(os.environ.get("BENCH_NOTIFY_BATCH", "50"))
# Empty: a fresh SQLite file; or e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test (tables must not exist).
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "")
OPERATOR_PRINCIPAL = "operator:bench"


def _serve_sink(tls_dir: str, spool: str, ready: Any, stop: Any, accepted: Any) -> None:
    """The SMTP sink in its own process (a relay is never in the sender's process): spools to ``spool``;
    ``accepted`` (a shared counter) follows what it took."""
    from services.devstack.devca import ensure_dev_pki
    from services.devstack.smtp_sink import SmtpSink

    pki = ensure_dev_pki(Path(tls_dir), ["smtp"])[0]
    sink = SmtpSink(
        mode="starttls", cert_file=pki["smtp"].cert_file, key_file=pki["smtp"].key_file, spool_dir=Path(spool)
    ).start()
    ready.put((sink.host, sink.port, str(pki.ca_file)))
    while not stop.wait(0.01):
        accepted.value = len(sink.handler.received)
    sink.stop()


def _serve_graph(ready: Any, stop: Any, accepted: Any) -> None:
    """The Graph API stand-in in its own process; ``accepted`` (a shared counter) follows what it took."""
    from services.devstack.graph_standin import GraphStandIn

    async def serve() -> None:
        graph = GraphStandIn(access_token=GRAPH_TOKEN, app_secret="bench-app-secret", templates=WA_TEMPLATES)
        ready.put(await graph.start())
        while not stop.is_set():
            accepted.value = len(graph.sent)
            await asyncio.sleep(0.01)
        await graph.stop()

    asyncio.run(serve())


async def _wait_for(counts: dict[str, Any], targets: dict[str, int], timeout_s: float = 600.0) -> dict[str, float]:
    """Seconds until each channel's receiver holds its target (polls every 20 ms): channel -> seconds."""
    started = time.perf_counter()
    done: dict[str, float] = {}
    while len(done) < len(targets):
        for name, target in targets.items():
            if name not in done and counts[name]() >= target:
                done[name] = time.perf_counter() - started
        if time.perf_counter() - started > timeout_s:
            held = {name: counts[name]() for name in targets}
            raise TimeoutError(f"receivers hold {held} of {targets} messages after {timeout_s:.0f} s")
        await asyncio.sleep(0.02)
    return done


async def run() -> dict[str, Any]:
    """Run both phases; return the figures."""
    from google.protobuf.timestamp_pb2 import Timestamp
    from grpc import aio
    from steward.notify.v1 import notify_pb2 as pb
    from steward.notify.v1 import notify_pb2_grpc

    from services.chassis.identity import CallerIdentity, identity_metadata
    from services.notify.main import create_server
    from services.notify.settings import NotifySettings
    from tests.plugins.infra import OpenBaoDev

    workdir = Path(tempfile.mkdtemp(prefix="steward-notify-bench-"))
    spool = workdir / "mail"
    mp = multiprocessing.get_context("spawn")
    ready, stop, mail_accepted = mp.Queue(), mp.Event(), mp.Value("q", 0)
    sink = mp.Process(target=_serve_sink, args=(str(workdir / "tls"), str(spool), ready, stop, mail_accepted))
    sink.start()
    host, smtp_port, ca_file = ready.get(timeout=60)
    graph_ready, graph_accepted = mp.Queue(), mp.Value("q", 0)
    graph = mp.Process(target=_serve_graph, args=(graph_ready, stop, graph_accepted))
    graph.start()
    graph_url = graph_ready.get(timeout=60)
    counts = {"email": lambda: int(mail_accepted.value), "whatsapp": lambda: int(graph_accepted.value)}
    bao = OpenBaoDev()
    bao.start()
    settings = NotifySettings(
        database_url=DATABASE_URL or f"sqlite:///{workdir / 'notify.db'}",
        transit={"url": bao.url, "token": bao.token},
        smtp={
            "host": host,
            "port": smtp_port,
            "tls": "starttls",
            "ca_file": ca_file,
            "from_address": "notices@steward.test",
        },
        whatsapp={
            "base_url": graph_url,
            "phone_number_id": "100000000000001",
            "access_token": GRAPH_TOKEN,
            "app_secret": "bench-app-secret",
            "templates": WA_TEMPLATES,
        },
        delivery={"batch": BATCH, "scan_interval_s": 0.05},
        http={"port": 0},
        recipient_hash_key=uuid.uuid4().hex * 2,
        unsubscribe_key=uuid.uuid4().hex * 2,
        nats={"enabled": False},
        trust_identity_metadata=True,
    )
    app, port = await create_server(settings, port=0)
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    notify = notify_pb2_grpc.NotifyServiceStub(channel)
    operator = identity_metadata(CallerIdentity(tenant_id="", principal=OPERATOR_PRINCIPAL, principal_kind="operator"))
    transit = app.ctx.keys.transit
    rows: list[Figures] = []
    cpu: dict[str, float] = {}
    try:
        started = time.perf_counter()
        tenants = [f"t-bench{i:06d}" for i in range(TENANTS)]

        async def set_contacts(n: int, tenant: str) -> None:
            contacts = [
                pb.Contact(
                    email=f"c{k}.{tenant}@example.com",
                    phone=f"+9198{n * CONTACTS + k:08d}",
                    role=pb.CONTACT_ROLE_SECURITY,
                    locale="en",
                )
                for k in range(CONTACTS)
            ]
            await notify.SetContacts(
                pb.SetContactsRequest(contacts=contacts),
                metadata=identity_metadata(CallerIdentity(tenant_id=tenant, principal="key:bench")),
            )

        for i in range(0, TENANTS, 16):
            await asyncio.gather(*(set_contacts(i + j, t) for j, t in enumerate(tenants[i : i + 16])))
        setup_s = time.perf_counter() - started
        per_channel = TENANTS * CONTACTS
        notices = per_channel * len(CHANNELS)

        # Breach fan-out: critical lane, every contact of every tenant, email and WhatsApp.
        detected = Timestamp()
        detected.FromDatetime(datetime.now(UTC) - timedelta(minutes=30))
        transit_before, cpu_before = transit.calls, time.process_time()
        started = time.perf_counter()
        await notify.DeclareBreach(
            pb.DeclareBreachRequest(
                nature="bench",
                data_categories=["contact_details"],
                all_tenants=True,
                detected_at=detected,
                contact_point="dpo@steward.example",
                measures="bench",
                idempotency_key=f"bench-{uuid.uuid4().hex}",
            ),
            metadata=operator,
            timeout=600,
        )
        declare_s = time.perf_counter() - started
        declare_transit = transit.calls - transit_before
        cpu["declare"] = time.process_time() - cpu_before
        done = await _wait_for(counts, {name: per_channel for name in CHANNELS})
        cpu["breach"] = time.process_time() - cpu_before
        breach_transit = transit.calls - transit_before
        fanout_s = declare_s + max(done.values())
        declare = Figures(f"DeclareBreach call ({TENANTS} tenants)", 1, declare_s, declare_s * 1000, declare_s * 1000)
        declare.transit_calls = declare_transit
        rows.append(declare)
        for name in CHANNELS:
            rows.append(
                Figures(
                    f"  breach {name} {TENANTS}x{CONTACTS} -> receiver", per_channel, declare_s + done[name], 0.0, 0.0
                )
            )
        fanout = Figures(f"breach fan-out {TENANTS}x{CONTACTS}x{len(CHANNELS)} (total)", notices, fanout_s, 0.0, 0.0)
        fanout.transit_calls = breach_transit
        rows.append(fanout)

        # Policy-change campaign: service lane, email only (RFC 8058 headers on every message).
        effective = Timestamp()
        effective.FromDatetime(datetime.now(UTC) + timedelta(days=31))
        transit_before, cpu_before = transit.calls, time.process_time()
        started = time.perf_counter()
        await notify.AnnouncePolicyChange(
            pb.AnnouncePolicyChangeRequest(
                policy_version="bench-1", effective_at=effective, idempotency_key=f"bench-{uuid.uuid4().hex}"
            ),
            metadata=operator,
            timeout=600,
        )
        campaign_s = time.perf_counter() - started
        campaign_s += (await _wait_for(counts, {"email": 2 * per_channel}))["email"]
        cpu["campaign"] = time.process_time() - cpu_before
        campaign = Figures(f"policy campaign {TENANTS}x{CONTACTS} email", per_channel, campaign_s, 0.0, 0.0)
        campaign.transit_calls = transit.calls - transit_before
        rows.append(campaign)
    finally:
        await channel.close()
        await app.stop(0)
        stop.set()
        sink.join(30)
        graph.join(30)
        bao.stop()
    where = "PostgreSQL" if DATABASE_URL else "SQLite"
    print_table(
        f"notify ({where}, OpenBao, STARTTLS sink and Graph stand-in in own processes; contacts set up in "
        f"{setup_s:.1f} s)",
        rows,
    )
    fanout = rows[len(CHANNELS) + 1]
    checks = {
        "notices_per_s": round(fanout.ops_per_s, 1),
        "notices_per_s_by_channel": {name: round(rows[1 + i].ops_per_s, 1) for i, name in enumerate(CHANNELS)},
        "campaign_email_per_s": round(campaign.ops_per_s, 1),
        "notices_per_s_target": 300,
        "breach_fanout_s": round(fanout.seconds, 1),
        "breach_fanout_target_s": 30,
        "cpu_ms_per_notice_breach": round(cpu["breach"] * 1000 / notices, 2),
        "cpu_ms_per_notice_campaign": round(cpu["campaign"] * 1000 / per_channel, 2),
        "cpu_s_declare": round(cpu["declare"], 2),
        "transit_calls_breach": fanout.transit_calls,
        "transit_calls_campaign": campaign.transit_calls,
        "tenants": TENANTS,
        "contacts_per_tenant": CONTACTS,
        "channels": list(CHANNELS),
        "batch": BATCH,
    }
    print(
        f"\n  breach fan-out {TENANTS} tenants x {CONTACTS} contacts x {len(CHANNELS)} channels: "
        f"{fanout.seconds:.1f} s ({fanout.ops_per_s:.0f} notices/s; targets >= 300/s, < 30 s)"
        f"\n  notify CPU per notice: breach {checks['cpu_ms_per_notice_breach']} ms, campaign "
        f"{checks['cpu_ms_per_notice_campaign']} ms (declare call {cpu['declare']:.2f} s CPU); Transit calls: "
        f"breach {fanout.transit_calls}, campaign {campaign.transit_calls}"
    )
    payload = {"rows": [row.row() for row in rows], "checks": checks, "cpu_count": os.cpu_count()}
    print(f"\nresults: {save_results('notify', payload)}")
    return payload


def main() -> None:
    """Entry point."""
    run_benchmark(run)


if __name__ == "__main__":
    main()
