"""dsr benchmark: data-subject requests from SubmitRequest to COMPLETED (ACCESS, then DELETION of the same
subjects), with a real vault, NATS JetStream and OpenBao (Transit signs every evidence entry). Run with
``make bench`` or ``python -m bench.dsr_bench``; sizes by BENCH_DSR_SUBJECTS and BENCH_DSR_RECORDS.

vault and dsr run in this process on SQLite (one event loop, as two services would not be), the load generator
in a separate process: it submits with ``BENCH_CONCURRENCY`` callers and polls GetRequest every 20 ms until the
request completes, so latencies are submit-to-COMPLETED at 20 ms resolution. dsr is called directly (identity
metadata trusted); the gateway's hop is measured by gateway_bench.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from grpc import aio

from bench.common import Figures, print_table, run_in_client_process, save_results, summarise

CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "16"))
N_SUBJECTS = int(os.environ.get("BENCH_DSR_SUBJECTS", "300"))
N_RECORDS = int(os.environ.get("BENCH_DSR_RECORDS", "20"))
POLL_S = 0.02


def _md(tenant: str) -> tuple[tuple[str, str], ...]:
    from services.chassis.identity import CallerIdentity, identity_metadata

    return identity_metadata(CallerIdentity(tenant_id=tenant, principal="bench", credential_id="bench"))


async def client_requests(port: int, tenant: str, emails: list[str], kind: int, concurrency: int) -> dict[str, Any]:
    """Submit one request of ``kind`` per email and wait for each to complete; latencies and wall time."""
    from steward.dsr.v1 import dsr_pb2 as pb
    from steward.dsr.v1 import dsr_pb2_grpc

    md = _md(tenant)
    latencies: list[float] = []
    failed: list[str] = []
    queue = iter(emails)
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = dsr_pb2_grpc.DsrServiceStub(channel)

        async def worker() -> None:
            for email in queue:
                started = time.perf_counter()
                answer = await stub.SubmitRequest(
                    pb.SubmitRequestRequest(type=kind, subject=pb.SubjectIdentifier(email=email)), metadata=md
                )
                request = answer.request
                while request.state not in (pb.REQUEST_STATE_COMPLETED, pb.REQUEST_STATE_FAILED):
                    await asyncio.sleep(POLL_S)
                    request = (
                        await stub.GetRequest(pb.GetRequestRequest(request_id=request.request_id), metadata=md)
                    ).request
                if request.state != pb.REQUEST_STATE_COMPLETED:
                    failed.append(request.reason_code)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return {"latencies": latencies, "seconds": seconds, "failed": failed}


async def _seed(vault_port: int, tenant: str, subjects: int, records: int) -> list[str]:
    """``subjects`` leads with an email each and ``records - 1`` notes; returns the emails."""
    from steward.vault.v1 import vault_pb2 as pb
    from steward.vault.v1 import vault_pb2_grpc

    md = _md(tenant)
    emails = [f"bench-{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(subjects)]
    async with aio.insecure_channel(f"127.0.0.1:{vault_port}") as channel:
        stub = vault_pb2_grpc.VaultServiceStub(channel)
        for email in emails:
            lead = pb.NewRecord(kind=pb.RECORD_KIND_LEAD_CONTACT, identifiers=pb.SubjectIdentifiers(email=email))
            lead.data.update({"name": "Bench Lead", "stage": "qualified"})
            subject = (await stub.PutRecord(pb.PutRecordRequest(record=lead), metadata=md)).record.subject_id
            notes = []
            for n in range(records - 1):
                note = pb.NewRecord(kind=pb.RECORD_KIND_NOTE, subject_id=subject)
                note.data.update({"text": f"call {n}: asked about pricing"})
                notes.append(note)
            if notes:
                await stub.PutRecords(pb.PutRecordsRequest(records=notes), metadata=md)
    return emails


async def run() -> dict[str, Any]:
    """Seed, run ACCESS then DELETION for every subject, print and save the figures."""
    from steward.dsr.v1 import dsr_pb2 as pb
    from steward.vault.v1 import vault_pb2, vault_pb2_grpc

    from services.dsr.main import create_server as create_dsr
    from services.dsr.settings import DsrSettings
    from services.vault.main import create_server as create_vault
    from services.vault.settings import VaultSettings
    from tests.plugins.infra import NatsServer, OpenBaoDev

    workdir = Path(tempfile.mkdtemp(prefix="steward-dsr-bench-"))
    bao = OpenBaoDev()
    bao.start()
    nats = NatsServer(workdir)
    nats.start()
    nats_settings = {"url": nats.url, "enabled": True, "outbox_poll_s": 0.05}
    vault, vault_port = await create_vault(
        VaultSettings(
            database_url=f"sqlite:///{workdir / 'vault.db'}",
            tombstone_database_url=f"sqlite:///{workdir / 'ledger.db'}",
            transit={"url": bao.url, "token": bao.token},
            nats=nats_settings,
            trust_identity_metadata=True,
        ),
        port=0,
    )
    dsr, dsr_port = await create_dsr(
        DsrSettings(
            database_url=f"sqlite:///{workdir / 'dsr.db'}",
            upstreams={"vault": {"address": f"127.0.0.1:{vault_port}"}},
            transit={"url": bao.url, "token": bao.token},
            nats=nats_settings,
            trust_identity_metadata=True,
        ),
        port=0,
    )
    rows: list[Figures] = []
    failures: dict[str, int] = {}
    try:
        tenant = f"t-bench-{uuid.uuid4().hex[:8]}"
        async with aio.insecure_channel(f"127.0.0.1:{vault_port}") as channel:
            admin = vault_pb2_grpc.VaultAdminServiceStub(channel)
            await admin.CreateTenant(vault_pb2.CreateTenantRequest(), metadata=_md(tenant))
        emails = await _seed(vault_port, tenant, N_SUBJECTS, N_RECORDS)
        for name, kind in (("ACCESS", pb.REQUEST_TYPE_ACCESS), ("DELETION", pb.REQUEST_TYPE_DELETION)):
            result = await asyncio.to_thread(
                run_in_client_process, client_requests, dsr_port, tenant, emails, kind, CONCURRENCY
            )
            rows.append(summarise(f"{name}: submit -> COMPLETED", result["latencies"], result["seconds"]))
            failures[name] = len(result["failed"])
    finally:
        await dsr.stop(0)
        await vault.stop(0)
        nats.kill()
        bao.stop()

    print(
        f"\ndsr benchmark ({N_SUBJECTS} subjects x {N_RECORDS} records, {CONCURRENCY} concurrent callers, "
        f"SQLite, {os.cpu_count()} cores; vault+dsr in one process, load generator in another)"
    )
    print_table("requests (ops/s = completed requests per second)", rows)
    print(f"not completed: {failures}")
    payload = {
        "subjects": N_SUBJECTS,
        "records_per_subject": N_RECORDS,
        "concurrency": CONCURRENCY,
        "rows": [r.row() for r in rows],
        "not_completed": failures,
    }
    print(f"saved {save_results('dsr_bench', payload)}")
    return payload


def main() -> None:
    """``python -m bench.dsr_bench``."""
    asyncio.run(run())


if __name__ == "__main__":
    main()
