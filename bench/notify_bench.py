"""Notify benchmark: a breach fan-out to N tenants x 2 contacts and a policy-change campaign to the same
tenants, through the real delivery engine, a real OpenBao (sealed contacts and payloads) and SQLite, into an
aiosmtpd sink over mandatory STARTTLS (in its own process,
as a relay would be). Run with ``make bench`` or ``python -m bench.notify_bench``.

Figures: the declaration call (planning every delivery under its idempotency key, sealing its payload), the
fan-out until the sink holds every notice, and notices per second end to end (target >= 300/s on the 2-core
machine; the issue's fan-out is 1,000 tenants x 2 contacts, ``BENCH_BREACH_TENANTS``). Email only: the WhatsApp
channel is not in this branch. NATS is off (nothing in these paths uses it).
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
# Deliveries the engine claims and sends concurrently per round.
BATCH = int(os.environ.get("BENCH_NOTIFY_BATCH", "50"))
# Empty: a fresh SQLite file; or e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test (tables must not exist).
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "")
OPERATOR_PRINCIPAL = "operator:bench"


def _serve_sink(tls_dir: str, spool: str, ready: Any, stop: Any) -> None:
    """The SMTP sink in its own process (a relay is never in the sender's process): spools to ``spool``."""
    from services.devstack.devca import ensure_dev_pki
    from services.devstack.smtp_sink import SmtpSink

    pki = ensure_dev_pki(Path(tls_dir), ["smtp"])[0]
    sink = SmtpSink(
        mode="starttls", cert_file=pki["smtp"].cert_file, key_file=pki["smtp"].key_file, spool_dir=Path(spool)
    ).start()
    ready.put((sink.host, sink.port, str(pki.ca_file)))
    stop.wait()
    sink.stop()


async def _wait_for(spool: Path, count: int, timeout_s: float = 600.0) -> float:
    """Seconds until the sink has spooled ``count`` messages (polls every 20 ms)."""
    started = time.perf_counter()
    while (held := len(os.listdir(spool))) < count:
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"sink holds {held} of {count} messages after {timeout_s:.0f} s")
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


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
    ready, stop = mp.Queue(), mp.Event()
    sink = mp.Process(target=_serve_sink, args=(str(workdir / "tls"), str(spool), ready, stop))
    sink.start()
    host, smtp_port, ca_file = ready.get(timeout=60)
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
        delivery={"batch": BATCH, "scan_interval_s": 0.05},
        recipient_hash_key=uuid.uuid4().hex * 2,
        unsubscribe_key=uuid.uuid4().hex * 2,
        nats={"enabled": False},
        trust_identity_metadata=True,
    )
    app, port = await create_server(settings, port=0)
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    notify = notify_pb2_grpc.NotifyServiceStub(channel)
    operator = identity_metadata(CallerIdentity(tenant_id="", principal=OPERATOR_PRINCIPAL, principal_kind="operator"))
    rows: list[Figures] = []
    try:
        started = time.perf_counter()
        tenants = [f"t-bench{i:06d}" for i in range(TENANTS)]

        async def set_contacts(tenant: str) -> None:
            contacts = [
                pb.Contact(email=f"c{k}.{tenant}@example.com", role=pb.CONTACT_ROLE_SECURITY, locale="en")
                for k in range(CONTACTS)
            ]
            await notify.SetContacts(
                pb.SetContactsRequest(contacts=contacts),
                metadata=identity_metadata(CallerIdentity(tenant_id=tenant, principal="key:bench")),
            )

        for i in range(0, TENANTS, 16):
            await asyncio.gather(*(set_contacts(t) for t in tenants[i : i + 16]))
        setup_s = time.perf_counter() - started
        notices = TENANTS * CONTACTS

        # Breach fan-out: critical lane, every contact of every tenant.
        detected = Timestamp()
        detected.FromDatetime(datetime.now(UTC) - timedelta(minutes=30))
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
        fanout_s = declare_s + await _wait_for(spool, notices)
        rows.append(
            Figures(f"DeclareBreach call ({TENANTS} tenants)", 1, declare_s, declare_s * 1000, declare_s * 1000)
        )
        rows.append(Figures(f"breach fan-out {TENANTS}x{CONTACTS} -> sink", notices, fanout_s, 0.0, 0.0))

        # Policy-change campaign: service lane, same tenants (RFC 8058 headers on every message).
        effective = Timestamp()
        effective.FromDatetime(datetime.now(UTC) + timedelta(days=31))
        started = time.perf_counter()
        await notify.AnnouncePolicyChange(
            pb.AnnouncePolicyChangeRequest(
                policy_version="bench-1", effective_at=effective, idempotency_key=f"bench-{uuid.uuid4().hex}"
            ),
            metadata=operator,
            timeout=600,
        )
        campaign_s = time.perf_counter() - started
        campaign_s += await _wait_for(spool, 2 * notices)
        rows.append(Figures(f"policy campaign {TENANTS}x{CONTACTS} -> sink", notices, campaign_s, 0.0, 0.0))
    finally:
        await channel.close()
        await app.stop(0)
        stop.set()
        sink.join(30)
        bao.stop()
    where = "PostgreSQL" if DATABASE_URL else "SQLite"
    print_table(f"notify ({where}, OpenBao, STARTTLS sink in own process; contacts set up in {setup_s:.1f} s)", rows)
    fanout = rows[1]
    checks = {
        "notices_per_s": round(max(rows[1].ops_per_s, rows[2].ops_per_s), 1),
        "notices_per_s_target": 300,
        "breach_fanout_s": round(fanout.seconds, 1),
        "breach_fanout_target_s": 30,
        "tenants": TENANTS,
        "contacts_per_tenant": CONTACTS,
    }
    print(
        f"\n  breach fan-out {TENANTS} tenants x {CONTACTS} contacts: {fanout.seconds:.1f} s "
        f"({fanout.ops_per_s:.0f} notices/s; targets >= 300/s, < 30 s)"
    )
    payload = {"rows": [row.row() for row in rows], "checks": checks, "cpu_count": os.cpu_count()}
    print(f"\nresults: {save_results('notify', payload)}")
    return payload


def main() -> None:
    """Entry point."""
    run_benchmark(run)


if __name__ == "__main__":
    main()
