"""Tenant export benchmark: records/s of ``ExportTenant`` for one large tenant, and the vault's peak RSS during the
export (constant memory: the export is read in keyset chunks, never loaded whole).

The vault runs in its own process (real gRPC, real OpenBao Transit, SQLite); this process seeds the tenant
(``BENCH_TENANT_EXPORT_RECORDS`` records, default 100,000 — the issue's size is 1,000,000: ``make bench
BENCH_TENANT_EXPORT_RECORDS=1000000``; one lead per 10 records, the rest notes of those leads), restarts the
vault so its memory holds nothing of the seeding, then exports the whole tenant as a client would, sampling
the vault's resident memory (``/proc/<pid>/status``) while the chunks stream. Run with ``make bench`` or
``python -m bench.tenant_export_bench``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from google.protobuf.struct_pb2 import Struct
from grpc import aio

from bench.common import VaultProcess, save_results

N_RECORDS = int(os.environ.get("BENCH_TENANT_EXPORT_RECORDS", "100000"))
CHUNK_RECORDS = int(os.environ.get("BENCH_TENANT_EXPORT_CHUNK", "1000"))
# The vault's DEK cache bound (entries); each cached subject key costs memory, so it bounds the export's RSS too.
DEK_CACHE = int(os.environ.get("BENCH_TENANT_EXPORT_DEK_CACHE", "100000"))
SEED_CONCURRENCY = 4
TARGET_RECORDS_PER_S = 20_000


def _md(tenant: str) -> tuple[tuple[str, str], ...]:
    from services.chassis.identity import CallerIdentity, identity_metadata

    return identity_metadata(CallerIdentity(tenant_id=tenant, principal="bench", credential_id="bench"))


def _data(i: int) -> Struct:
    """A realistic ~300-byte CRM record (synthetic)."""
    data = Struct()
    data.update(
        {
            "first_name": f"Lead{i}",
            "company": f"Acme {i % 97} Pvt Ltd",
            "stage": "qualified",
            "value_inr": 125000 + i,
            "notes": "Asked for a demo of the reporting module; follow up after the quarterly review.",
            "tags": ["enterprise", "north"],
        }
    )
    return data


async def seed(port: int, tenant: str, total: int) -> None:
    """``total`` records: one LEAD_CONTACT per 10 records, the rest NOTEs of those subjects, in batches of 500."""
    from steward.vault.v1 import vault_pb2 as pb
    from steward.vault.v1 import vault_pb2_grpc

    md = _md(tenant)
    leads = max(1, total // 10)
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = vault_pb2_grpc.VaultServiceStub(channel)
        await vault_pb2_grpc.VaultAdminServiceStub(channel).CreateTenant(pb.CreateTenantRequest(), metadata=md)
        subjects: list[str] = []

        async def put(batch: list[Any]) -> list[Any]:
            return list((await stub.PutRecords(pb.PutRecordsRequest(records=batch), metadata=md)).records)

        lead_batches = [
            [
                pb.NewRecord(
                    kind=pb.RECORD_KIND_LEAD_CONTACT,
                    data=_data(i),
                    identifiers=pb.SubjectIdentifiers(external_id=f"crm-{i}-{uuid.uuid4().hex[:6]}"),
                )
                for i in range(start, min(start + 500, leads))
            ]
            for start in range(0, leads, 500)
        ]
        for group in range(0, len(lead_batches), SEED_CONCURRENCY):
            for stored in await asyncio.gather(*(put(b) for b in lead_batches[group : group + SEED_CONCURRENCY])):
                subjects += [r.subject_id for r in stored]
        notes = total - leads
        starts = list(range(0, notes, 500))
        for group in range(0, len(starts), SEED_CONCURRENCY):
            batches = [
                [
                    pb.NewRecord(kind=pb.RECORD_KIND_NOTE, data=_data(i), subject_id=subjects[i % len(subjects)])
                    for i in range(start, min(start + 500, notes))
                ]
                for start in starts[group : group + SEED_CONCURRENCY]
            ]
            await asyncio.gather(*(put(b) for b in batches))


async def export(port: int, tenant: str, rss_kb: Any = None, total: int = 0) -> dict[str, Any]:
    """The whole export as a client reads it: records, chunks, bytes, whether the manifest verifies, and the vault's
    resident memory (``rss_kb()``) as the export passes each quarter of ``total`` records."""
    from steward.vault.v1 import vault_pb2 as pb
    from steward.vault.v1 import vault_pb2_grpc

    from services.vault.exports import signature_valid

    records = chunks = size = 0
    manifest = None
    at_quarter: dict[int, int] = {}
    async with aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        stub = vault_pb2_grpc.VaultServiceStub(ch)
        started = time.perf_counter()
        request = pb.ExportTenantRequest(chunk_records=CHUNK_RECORDS)
        async for item in stub.ExportTenant(request, metadata=_md(tenant), timeout=3600):
            if item.WhichOneof("item") == "manifest":
                manifest = item.manifest
            else:
                chunks += 1
                records = item.chunk.records_done
                size += len(item.chunk.body)
                quarter = 4 * records // total if total else 0
                if rss_kb is not None and quarter and quarter not in at_quarter:
                    at_quarter[quarter] = rss_kb()
        seconds = time.perf_counter() - started
    assert manifest is not None and manifest.record_count == records
    return {
        "records": records,
        "subjects": manifest.subject_count,
        "chunks": chunks,
        "bytes": size,
        "seconds": seconds,
        "manifest_verifies": signature_valid(manifest),
        "rss_at_quarter_kb": at_quarter,
    }


async def run() -> dict[str, Any]:
    """Seed, restart the vault, export while sampling its memory; print and save the figures."""
    from tests.plugins.infra import OpenBaoDev

    bao = OpenBaoDev()
    bao.start()
    workdir = Path(tempfile.mkdtemp(prefix="steward-export-bench-"))
    settings = {
        "database_url": f"sqlite:///{workdir / 'vault.db'}",
        "tombstone_database_url": f"sqlite:///{workdir / 'ledger.db'}",
        "transit": {"url": bao.url, "token": bao.token},
        "nats": {"enabled": False},
        "trust_identity_metadata": True,
        "dek_cache_max_entries": DEK_CACHE,
    }
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        seeding = VaultProcess(settings)
        started = time.perf_counter()
        await seed(seeding.port, tenant, N_RECORDS)
        seed_s = time.perf_counter() - started
        seeding.stop()

        vault = VaultProcess(settings)
        baseline_kb = vault.memory_kb()
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                samples.append(vault.memory_kb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu_before = vault.cpu_seconds()
        figures = await export(vault.port, tenant, vault.memory_kb, N_RECORDS)
        vault_cpu_s = vault.cpu_seconds() - cpu_before
        done.set()
        sampler.join()
        peak_kb = vault.memory_kb("VmHWM")
        vault.stop()
    finally:
        bao.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # a 1M-record tenant leaves ~0.9 GB of databases
    quarters = figures.pop("rss_at_quarter_kb")
    payload = {
        **figures,
        "records_per_s": round(figures["records"] / figures["seconds"], 1),
        "seed_seconds": round(seed_s, 1),
        "vault_cpu_seconds": round(vault_cpu_s, 1),
        "records_per_vault_cpu_s": round(figures["records"] / vault_cpu_s, 1) if vault_cpu_s else 0,
        "vault_rss_before_kb": baseline_kb,
        **{f"vault_rss_at_{25 * q}pct_kb": quarters.get(q, 0) for q in (1, 2, 3, 4)},
        "vault_rss_max_sampled_kb": max(samples, default=0),
        "vault_peak_rss_kb": peak_kb,
        "chunk_records": CHUNK_RECORDS,
        "dek_cache_max_entries": DEK_CACHE,
    }
    print("\nTenant export (ExportTenant, SQLite, real OpenBao, vault in its own process)")
    print(f"  records exported     : {figures['records']} ({figures['subjects']} subjects, {figures['chunks']} chunks)")
    print(f"  seconds              : {figures['seconds']:.1f} (seeding took {seed_s:.1f} s)")
    print(f"  records/s            : {payload['records_per_s']:.0f} (target >= {TARGET_RECORDS_PER_S})")
    print(
        f"  vault CPU            : {vault_cpu_s:.1f} s user+system = "
        f"{payload['records_per_vault_cpu_s']:.0f} records per CPU-second"
    )
    print(f"  bytes streamed       : {figures['bytes'] / 1e6:.1f} MB")
    print(f"  manifest verifies    : {figures['manifest_verifies']} (DEK cache bound {DEK_CACHE} entries)")
    print(
        f"  vault RSS (MB)       : before {baseline_kb / 1024:.0f}, "
        + ", ".join(f"at {25 * q}% {quarters.get(q, 0) / 1024:.0f}" for q in (1, 2, 3, 4))
        + f", max sampled {payload['vault_rss_max_sampled_kb'] / 1024:.0f}, peak (VmHWM) {peak_kb / 1024:.0f}"
    )
    print(f"\nresults: {save_results('tenant_export', payload)}")
    return payload


def main() -> None:
    """Entry point."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    asyncio.run(run())


if __name__ == "__main__":
    main()
