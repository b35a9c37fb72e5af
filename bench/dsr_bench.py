"""dsr benchmark (issue 10): DELETION requests for subjects holding 100 records each, submitted through the
gateway, from SubmitRequest to COMPLETED. Target: p50 < 1 s and >= 50 completed requests per second.

Run with ``make bench`` or ``python -m bench.dsr_bench``. Everything is real and on loopback: OpenBao dev (Transit
signs every evidence entry), nats-server with JetStream (the streams applied as declared, dead-letter stream
included), and gateway, vault and dsr each as its own process on SQLite, as they are deployed; the load
generator is a fourth process. Sizes: ``BENCH_DSR_SUBJECTS`` (1,000) subjects x ``BENCH_DSR_RECORDS`` (100)
records, ``BENCH_DSR_CONCURRENCY`` (32) requests in flight; ``BENCH_DSR_ACCESS=1`` adds an ACCESS phase first.

Timing: each caller notes the wall time just before SubmitRequest and waits for the request's
``dsr.request.changed`` event with state COMPLETED (a core NATS subscription: no polling load on the services);
the latency is the event's ``occurred_at`` (the moment dsr committed COMPLETED) minus that submit time, same
host clock. Throughput = completed requests / (last COMPLETED - first submit). Afterwards ListRequests through
the gateway must count every request COMPLETED.

``BENCH_PROFILE=1`` runs each service under ``bench.profiled`` (cProfile on every thread) and prints each
process's top functions; CPU seconds per process are printed on every run (what a shared machine cannot blur).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from grpc import aio

from bench.common import Figures, print_table, run_in_client_process, save_results, summarise

N_SUBJECTS = int(os.environ.get("BENCH_DSR_SUBJECTS", "1000"))
N_RECORDS = int(os.environ.get("BENCH_DSR_RECORDS", "100"))
CONCURRENCY = int(os.environ.get("BENCH_DSR_CONCURRENCY", "32"))
WITH_ACCESS = os.environ.get("BENCH_DSR_ACCESS", "") == "1"
PROFILE = os.environ.get("BENCH_PROFILE", "") == "1"
SEED_BATCH = 500  # PutRecords' limit
REQUEST_TIMEOUT_S = 120.0
SERVICES = ("gateway", "vault", "dsr")


async def client_requests(
    gateway_port: int, token: str, nats_url: str, emails: list[str], kind: int, concurrency: int
) -> dict[str, Any]:
    """Submit one request of ``kind`` per email through the gateway, ``concurrency`` in flight; latencies (from
    the COMPLETED events' times), wall time, and what did not complete."""
    import nats
    from steward.dsr.v1 import dsr_pb2 as pb
    from steward.dsr.v1 import dsr_pb2_grpc
    from steward.events.v1 import events_pb2 as ev

    from services.chassis.catalog import subject_of

    finished: dict[str, tuple[str, float]] = {}
    waiters: dict[str, asyncio.Future[None]] = {}

    async def on_changed(msg: Any) -> None:
        event = ev.Event.FromString(msg.data)
        changed = event.dsr_request_changed
        if changed.state not in ("REQUEST_STATE_COMPLETED", "REQUEST_STATE_FAILED"):
            return
        finished[changed.request_id] = (changed.state, event.occurred_at.ToMicroseconds() / 1e6)
        waiter = waiters.pop(changed.request_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    connection = await nats.connect(nats_url)
    await connection.subscribe(subject_of(ev.DsrRequestChanged), cb=on_changed)
    await connection.flush()
    md = (("authorization", f"Bearer {token}"),)
    latencies: list[float] = []
    failed: list[str] = []
    first_submit = float("inf")
    last_done = 0.0
    queue = iter(emails)
    async with aio.insecure_channel(f"127.0.0.1:{gateway_port}") as channel:
        stub = dsr_pb2_grpc.DsrServiceStub(channel)

        async def worker() -> None:
            nonlocal first_submit, last_done
            for email in queue:
                submitted = time.time()
                first_submit = min(first_submit, submitted)
                answer = await stub.SubmitRequest(
                    pb.SubmitRequestRequest(type=kind, subject=pb.SubjectIdentifier(email=email)),
                    metadata=md,
                    timeout=30,
                )
                request_id = answer.request.request_id
                if request_id not in finished:
                    waiter = waiters[request_id] = asyncio.get_running_loop().create_future()
                    try:
                        await asyncio.wait_for(waiter, REQUEST_TIMEOUT_S)
                    except TimeoutError:
                        failed.append("TIMEOUT")
                        continue
                state, done_at = finished[request_id]
                if state != "REQUEST_STATE_COMPLETED":
                    failed.append(state)
                    continue
                latencies.append(done_at - submitted)
                last_done = max(last_done, done_at)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        completed = 0
        page = ""
        while True:  # every request must show COMPLETED through the gateway too
            listing = await stub.ListRequests(
                pb.ListRequestsRequest(state=pb.REQUEST_STATE_COMPLETED, page_size=500, page_token=page), metadata=md
            )
            completed += len(listing.requests)
            page = listing.next_page_token
            if not page:
                break
    await connection.close()
    return {"latencies": latencies, "seconds": last_done - first_submit, "failed": failed, "listed": completed}


def _md(tenant: str) -> tuple[tuple[str, str], ...]:
    from services.chassis.identity import CallerIdentity, identity_metadata

    return identity_metadata(CallerIdentity(tenant_id=tenant, principal="bench", credential_id="bench"))


async def _seed(vault_port: int, tenant: str, subjects: int, records: int) -> list[str]:
    """``subjects`` leads with an email each and ``records - 1`` notes each (PutRecords of 500, straight to the
    vault: seeding is not what is measured); returns the emails."""
    from steward.vault.v1 import vault_pb2 as pb
    from steward.vault.v1 import vault_pb2_grpc

    md = _md(tenant)
    emails = [f"bench-{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(subjects)]
    async with aio.insecure_channel(f"127.0.0.1:{vault_port}") as channel:
        stub = vault_pb2_grpc.VaultServiceStub(channel)
        subject_ids: list[str] = []
        for start in range(0, len(emails), SEED_BATCH):
            leads = []
            for email in emails[start : start + SEED_BATCH]:
                lead = pb.NewRecord(kind=pb.RECORD_KIND_LEAD_CONTACT, identifiers=pb.SubjectIdentifiers(email=email))
                lead.data.update({"name": "Bench Lead", "stage": "qualified"})
                leads.append(lead)
            answer = await stub.PutRecords(pb.PutRecordsRequest(records=leads), metadata=md, timeout=120)
            subject_ids += [r.subject_id for r in answer.records]
        notes = []
        for subject in subject_ids:
            for n in range(records - 1):
                note = pb.NewRecord(kind=pb.RECORD_KIND_NOTE, subject_id=subject)
                note.data.update({"text": f"call {n}: asked about pricing"})
                notes.append(note)
        batches = [notes[i : i + SEED_BATCH] for i in range(0, len(notes), SEED_BATCH)]
        pending = iter(batches)

        async def put() -> None:
            for batch in pending:
                await stub.PutRecords(pb.PutRecordsRequest(records=batch), metadata=md, timeout=120)

        await asyncio.gather(*(put() for _ in range(4)))
    return emails


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (and its reaped children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _start(name: str, env: dict[str, str], port: int, workdir: Path) -> subprocess.Popen[bytes]:
    from tests.plugins.infra import wait_for_port

    module = f"services.{name}.main"
    command = (
        [sys.executable, "-m", "bench.profiled", module, str(workdir / f"{name}.prof")]
        if PROFILE
        else [
            sys.executable,
            "-m",
            module,
        ]
    )
    log = open(workdir / f"{name}.log", "wb")  # the process keeps it open
    proc = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=log)
    wait_for_port(port, timeout_s=90, proc=proc)
    return proc


async def _apply_streams(nats_url: str) -> None:
    import nats

    from services.chassis.settings import NatsSettings
    from services.chassis.streams import apply_streams

    connection = await nats.connect(nats_url)
    try:
        await apply_streams(connection.jetstream(), NatsSettings(url=nats_url))
    finally:
        await connection.close()


async def _provision(gateway_port: int, admin_token: str) -> tuple[str, str]:
    """A tenant (and its vault) created through the gateway, and a dsr API key for it: (tenant id, token)."""
    from steward.gateway.v1 import gateway_pb2, gateway_pb2_grpc

    from tests.integration.gateway.support import sample_details

    md = (("authorization", f"Bearer {admin_token}"),)
    async with aio.insecure_channel(f"127.0.0.1:{gateway_port}") as channel:
        admin = gateway_pb2_grpc.GatewayAdminServiceStub(channel)
        tenant = await admin.CreateTenant(
            gateway_pb2.CreateTenantRequest(details=sample_details("Bench Ltd")), metadata=md, timeout=60
        )
        key = await admin.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(
                tenant_id=tenant.tenant.tenant_id, name="bench", scopes=["dsr:submit", "dsr:manage"]
            ),
            metadata=md,
            timeout=60,
        )
    return tenant.tenant.tenant_id, key.token


async def run() -> dict[str, Any]:
    """Seed, run the phases, print and save the figures."""
    from steward.dsr.v1 import dsr_pb2 as pb

    from tests.integration.gateway.support import AUDIENCE, ISSUER, PEPPER, REGISTRY_KEY, TestIdP
    from tests.plugins.infra import NatsServer, OpenBaoDev, free_port

    workdir = Path(tempfile.mkdtemp(prefix="steward-dsr-bench-"))
    bao = OpenBaoDev()
    bao.start()
    nats_server = NatsServer(workdir)
    nats_server.start()
    await _apply_streams(nats_server.url)
    idp = TestIdP(workdir)
    ports = {name: free_port() for name in SERVICES}
    common = {"NATS__URL": nats_server.url, "NATS__ENABLED": "true", "LOG_LEVEL": "WARNING"}
    envs = {
        "vault": {
            "DATABASE_URL": f"sqlite:///{workdir / 'vault.db'}",
            "TOMBSTONE_DATABASE_URL": f"sqlite:///{workdir / 'ledger.db'}",
            "TRANSIT__URL": bao.url,
            "TRANSIT__TOKEN": bao.token,
            "TRUST_IDENTITY_METADATA": "true",
        },
        "dsr": {
            "DATABASE_URL": f"sqlite:///{workdir / 'dsr.db'}",
            "UPSTREAMS__VAULT__ADDRESS": f"127.0.0.1:{ports['vault']}",
            "TRANSIT__URL": bao.url,
            "TRANSIT__TOKEN": bao.token,
            "TRUST_IDENTITY_METADATA": "true",
        },
        "gateway": {
            "DATABASE_URL": f"sqlite:///{workdir / 'gateway.db'}",
            "API_KEY_PEPPER": PEPPER,
            "REGISTRY_KEY": REGISTRY_KEY,
            "ENV": "bench",
            "UPSTREAMS__VAULT__ADDRESS": f"127.0.0.1:{ports['vault']}",
            "UPSTREAMS__DSR__ADDRESS": f"127.0.0.1:{ports['dsr']}",
            "JWT__JWKS_FILE": str(idp.jwks_file),
            "JWT__ISSUER": ISSUER,
            "JWT__AUDIENCE": AUDIENCE,
            "RATE_LIMITS__TENANT_RPS": "1000000",
            "RATE_LIMITS__TENANT_BURST": "1000000",
        },
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    rows: list[Figures] = []
    failures: dict[str, list[str]] = {}
    listed: dict[str, int] = {}
    cpu: dict[str, dict[str, float]] = {}
    try:
        for name in ("vault", "dsr", "gateway"):
            prefix = f"STEWARD_{name.upper()}__"
            env = {prefix + k: v for k, v in {**common, **envs[name], "GRPC__PORT": str(ports[name])}.items()}
            procs[name] = _start(name, env, ports[name], workdir)
        tenant, token = await _provision(ports["gateway"], idp.token("bench-admin", ["ops:admin"]))
        started = time.perf_counter()
        emails = await _seed(ports["vault"], tenant, N_SUBJECTS, N_RECORDS)
        print(f"seeded {N_SUBJECTS} x {N_RECORDS} records in {time.perf_counter() - started:.1f} s")
        phases = [("ACCESS", pb.REQUEST_TYPE_ACCESS)] if WITH_ACCESS else []
        phases.append(("DELETION", pb.REQUEST_TYPE_DELETION))
        for name, kind in phases:
            watched = {**procs, "nats": nats_server.proc, "openbao": bao.proc}
            before = {service: _cpu_seconds(proc.pid) for service, proc in watched.items() if proc is not None}
            result = await asyncio.to_thread(
                run_in_client_process,
                client_requests,
                ports["gateway"],
                token,
                nats_server.url,
                emails,
                kind,
                CONCURRENCY,
            )
            cpu[name] = {s: round(_cpu_seconds(watched[s].pid) - seconds, 2) for s, seconds in before.items()}  # type: ignore[union-attr]
            rows.append(summarise(f"{name}: submit -> COMPLETED", result["latencies"], result["seconds"]))
            failures[name] = result["failed"]
            listed[name] = result["listed"]
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        nats_server.kill()
        bao.stop()

    print(
        f"\ndsr benchmark ({N_SUBJECTS} subjects x {N_RECORDS} records, {CONCURRENCY} requests in flight, through "
        f"the gateway; gateway, vault, dsr and the load generator in separate processes, SQLite, "
        f"{os.cpu_count()} cores)"
    )
    print_table("requests (ops/s = completed requests per second)", rows)
    for name in failures:
        per_request = {service: round(seconds * 1000 / max(1, N_SUBJECTS), 2) for service, seconds in cpu[name].items()}
        print(
            f"{name}: CPU ms per request {per_request}; not completed {len(failures[name])}; "
            f"ListRequests(COMPLETED) counts {listed[name]}"
        )
    deletion = rows[-1]
    verdict = "met" if deletion.p50_ms < 1000 and deletion.ops_per_s >= 50 else "NOT met"
    print(f"target p50 < 1 s and >= 50 requests/s: {verdict}")
    if PROFILE:
        for service in SERVICES:
            print(f"\n--- {service}: top functions by own time ({workdir / (service + '.prof')}) ---")
            print((workdir / f"{service}.prof.txt").read_text() if (workdir / f"{service}.prof.txt").exists() else "")
    payload = {
        "subjects": N_SUBJECTS,
        "records_per_subject": N_RECORDS,
        "concurrency": CONCURRENCY,
        "rows": [r.row() for r in rows],
        "cpu_seconds": cpu,
        "not_completed": {name: len(f) for name, f in failures.items()},
        "listed_completed": listed,
    }
    print(f"saved {save_results('dsr_bench', payload)}")
    return payload


def main() -> None:
    """``python -m bench.dsr_bench``."""
    started = time.perf_counter()
    asyncio.run(run())
    print(f"(took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
