"""Vault benchmark: PutRecord, GetRecord, PutRecords and ExportSubject through real gRPC against a real
OpenBao and SQLite, with Transit call counts, beside a naive baseline (one Transit encrypt per record
plus an insert). Run with ``make bench`` or ``python -m bench.vault_bench``.

The vault runs in this process; load comes from a separate process so client and server do not share
a GIL. NATS is off (the outbox still records every event) so the figures are the vault's own.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from google.protobuf.struct_pb2 import Struct
from grpc import aio

from bench.common import (
    BenchDatabases,
    Figures,
    on_each_database,
    print_table,
    run_in_client_process,
    summarise,
    timed_calls,
)
from bench.naive_vault import start_naive_vault

CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "16"))
N_NEW = int(os.environ.get("BENCH_NEW_SUBJECTS", "1000"))
N_PUT = int(os.environ.get("BENCH_PUTS", "3000"))
N_GET = int(os.environ.get("BENCH_GETS", "5000"))
N_BATCHES = int(os.environ.get("BENCH_BATCHES", "40"))
N_EXPORT = int(os.environ.get("BENCH_EXPORT_RECORDS", "10000"))
N_NAIVE = int(os.environ.get("BENCH_NAIVE", "1000"))


def lead_data(i: int) -> Struct:
    """A realistic ~300-byte lead record (synthetic)."""
    data = Struct()
    data.update(
        {
            "first_name": f"Lead{i}",
            "last_name": "Sharma",
            "company": f"Acme {i % 97} Pvt Ltd",
            "stage": "qualified",
            "value_inr": 125000 + i,
            "source": "webinar",
            "notes": "Asked for a demo of the reporting module; follow up after the quarterly review.",
            "tags": ["enterprise", "north"],
        }
    )
    return data


def _md(tenant: str) -> tuple[tuple[str, str], ...]:
    from services.chassis.identity import CallerIdentity, identity_metadata

    return identity_metadata(CallerIdentity(tenant_id=tenant, principal="bench", credential_id="bench"))


async def client_new_subjects(port: int, tenant: str, total: int, concurrency: int) -> dict[str, Any]:
    from steward.vault.v1 import vault_pb2 as pb
    from steward.vault.v1 import vault_pb2_grpc

    md = _md(tenant)
    subjects: list[str] = [""] * total
    records: list[str] = [""] * total
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = vault_pb2_grpc.VaultServiceStub(channel)

        async def call(i: int) -> None:
            reply = await stub.PutRecord(
                pb.PutRecordRequest(
                    record=pb.NewRecord(
                        kind=pb.RECORD_KIND_LEAD_CONTACT,
                        data=lead_data(i),
                        identifiers=pb.SubjectIdentifiers(email=f"lead{i}-{uuid.uuid4().hex[:6]}@example.com"),
                    )
                ),
                metadata=md,
            )
            subjects[i] = reply.record.subject_id
            records[i] = reply.record.id

        latencies, seconds = await timed_calls(call, total, concurrency)
    return {"latencies": latencies, "seconds": seconds, "subjects": subjects, "records": records}


async def client_put_existing(
    port: int, tenant: str, subjects: list[str], total: int, concurrency: int
) -> dict[str, Any]:
    from steward.vault.v1 import vault_pb2 as pb
    from steward.vault.v1 import vault_pb2_grpc

    md = _md(tenant)
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = vault_pb2_grpc.VaultServiceStub(channel)

        async def call(i: int) -> None:
            await stub.PutRecord(
                pb.PutRecordRequest(
                    record=pb.NewRecord(
                        kind=pb.RECORD_KIND_INTERACTION, subject_id=subjects[i % len(subjects)], data=lead_data(i)
                    )
                ),
                metadata=md,
            )

        latencies, seconds = await timed_calls(call, total, concurrency)
    return {"latencies": latencies, "seconds": seconds}


async def client_get(port: int, tenant: str, records: list[str], total: int, concurrency: int) -> dict[str, Any]:
    from steward.vault.v1 import vault_pb2 as pb
    from steward.vault.v1 import vault_pb2_grpc

    md = _md(tenant)
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = vault_pb2_grpc.VaultServiceStub(channel)

        async def call(i: int) -> None:
            await stub.GetRecord(pb.GetRecordRequest(record_id=records[i % len(records)]), metadata=md)

        latencies, seconds = await timed_calls(call, total, concurrency)
    return {"latencies": latencies, "seconds": seconds}


async def client_batches(
    port: int, tenant: str, subjects: list[str], batches: int, size: int, concurrency: int, same_subject: bool
) -> dict[str, Any]:
    from steward.vault.v1 import vault_pb2 as pb
    from steward.vault.v1 import vault_pb2_grpc

    md = _md(tenant)
    requests = []
    for b in range(batches):
        items = [
            pb.NewRecord(
                kind=pb.RECORD_KIND_INTERACTION,
                data=lead_data(b * size + i),
                subject_id=subjects[0] if same_subject else subjects[(b * size + i) % len(subjects)],
            )
            for i in range(size)
        ]
        requests.append(pb.PutRecordsRequest(records=items))
    async with aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        stub = vault_pb2_grpc.VaultServiceStub(channel)

        async def call(i: int) -> None:
            await stub.PutRecords(requests[i], metadata=md)

        latencies, seconds = await timed_calls(call, batches, concurrency)
    return {"latencies": latencies, "seconds": seconds}


async def client_export(port: int, tenant: str, subject: str) -> dict[str, Any]:
    from steward.vault.v1 import vault_pb2 as pb
    from steward.vault.v1 import vault_pb2_grpc

    md = _md(tenant)
    async with aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        stub = vault_pb2_grpc.VaultServiceStub(channel)
        started = time.perf_counter()
        count = 0
        summary = None
        async for item in stub.ExportSubject(
            pb.ExportSubjectRequest(subject_id=subject, request_id="bench"), metadata=md
        ):
            if item.HasField("record"):
                count += 1
            else:
                summary = item.summary.record_count
        return {"seconds": time.perf_counter() - started, "records": count, "summary": summary}


async def run() -> dict[str, Any]:
    """Every phase on each database (SQLite, and PostgreSQL when reachable: ``BENCH_DATABASES``)."""
    if os.environ.get("BENCH_SWITCH"):
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH"]))
    return await on_each_database("vault", run_on, {})


async def run_on(dbs: BenchDatabases, bao: Any) -> dict[str, Any]:
    """Every phase on one database; prints the table and the targets; returns the figures."""
    from services.vault.main import create_server
    from services.vault.settings import VaultSettings

    settings = VaultSettings(
        database_url=dbs.url("vault"),
        tombstone_database_url=dbs.url("ledger"),
        transit={"url": bao.url, "token": bao.token},
        nats={"enabled": False},
        trust_identity_metadata=True,
        grpc={"max_message_bytes": 64 << 20},
    )
    app, port = await create_server(settings, port=0)
    rows: list[Figures] = []
    try:
        from steward.vault.v1 import vault_pb2 as pb
        from steward.vault.v1 import vault_pb2_grpc

        tenant = f"bench-{uuid.uuid4().hex[:8]}"
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await vault_pb2_grpc.VaultAdminServiceStub(channel).CreateTenant(
                pb.CreateTenantRequest(), metadata=_md(tenant)
            )
        transit = app.transit

        async def phase(name: str, target: Any, *args: Any, items: int = 1) -> dict[str, Any]:
            before = transit.calls
            result = await asyncio.to_thread(run_in_client_process, target, *args)
            if "latencies" in result:
                figures = summarise(name, result["latencies"], result["seconds"], items)
                figures.transit_calls = transit.calls - before
                rows.append(figures)
            result["transit_calls"] = transit.calls - before
            return result

        new = await phase("PutRecord, new subject each", client_new_subjects, port, tenant, N_NEW, CONCURRENCY)
        await phase(
            "PutRecord, existing (cached) subject",
            client_put_existing,
            port,
            tenant,
            new["subjects"],
            N_PUT,
            CONCURRENCY,
        )
        await phase("GetRecord, cached subject", client_get, port, tenant, new["records"], N_GET, CONCURRENCY)
        await phase(
            "PutRecords x500, cached subjects",
            client_batches,
            port,
            tenant,
            new["subjects"],
            N_BATCHES,
            500,
            2,
            False,
            items=500,
        )
        export_subject = new["subjects"][0]
        await phase(
            "PutRecords x500, one subject (export setup)",
            client_batches,
            port,
            tenant,
            [export_subject],
            N_EXPORT // 500,
            500,
            2,
            True,
            items=500,
        )
        app.ctx.keyring.cache.clear()  # export from a cold cache: the one Transit call is counted
        export = await phase("ExportSubject", client_export, port, tenant, export_subject)
        writer = app.db._writer
        if writer is not None:
            print(f"group commit: {writer.units} units in {writer.batches} batches")
    finally:
        await app.stop(0)
    naive_server, naive_port, naive_servicer = await start_naive_vault(bao.url, bao.token, dbs.url("naive"))
    try:
        result = await asyncio.to_thread(
            run_in_client_process, client_put_existing, naive_port, "naive", ["s"], N_NAIVE, CONCURRENCY
        )
        naive = summarise("naive baseline PutRecord (Transit per record)", result["latencies"], result["seconds"])
        naive.transit_calls = naive_servicer.transit_calls
        rows.append(naive)
    finally:
        await naive_server.stop(0)
        naive_servicer.engine.dispose()
    print_table(
        f"=== Vault benchmark on {dbs.label} (loopback, {os.cpu_count()} cores, {CONCURRENCY} concurrent callers) ===",
        rows,
    )
    put_cached = next(r for r in rows if r.name.startswith("PutRecord, existing"))
    batch = next(r for r in rows if r.name.startswith("PutRecords x500, cached"))
    new_row = rows[0]
    get_row = next(r for r in rows if r.name.startswith("GetRecord"))
    checks = {
        "transit_calls_per_new_subject": (new_row.transit_calls or 0) / max(new_row.ops, 1),
        "transit_calls_per_cached_read": (get_row.transit_calls or 0) / max(get_row.ops, 1),
        "putrecord_vs_naive": put_cached.ops_per_s / naive.ops_per_s,
        "putrecords_records_per_s": batch.items_per_s,
        "export_records": export["records"],
        "export_seconds": export["seconds"],
        "export_transit_calls": export["transit_calls"],
    }
    print(
        f"\nTargets on {dbs.label}: 1 Transit call per new subject, 0 per cached read; PutRecord >= 5x naive; "
        "PutRecords >= 20,000 records/s; ExportSubject of 10,000 records <= 2 s"
    )
    print(f"  Transit calls per new subject : {checks['transit_calls_per_new_subject']:.2f}")
    print(f"  Transit calls per cached read : {checks['transit_calls_per_cached_read']:.2f}")
    print(f"  PutRecord / naive baseline    : {checks['putrecord_vs_naive']:.1f}x")
    print(f"  PutRecords records/s          : {checks['putrecords_records_per_s']:.0f}")
    print(
        f"  ExportSubject                 : {export['records']} records in {export['seconds']:.2f} s "
        f"({export['transit_calls']} Transit call(s), cold cache)"
    )
    return {"rows": [r.row() for r in rows], "checks": checks}


def main() -> None:
    """Entry point."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    asyncio.run(run())


if __name__ == "__main__":
    main()
