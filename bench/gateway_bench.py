"""Gateway benchmark: PutRecord/GetRecord through the gateway vs directly against the vault vs a bare gRPC
echo server (and the gateway in front of that echo server, to isolate the gateway's own cost).

Run with ``python -m bench.gateway_bench`` (or ``make bench``). Everything is real and on loopback: OpenBao
dev server, the vault (in this process, SQLite, NATS off), the gateway as its own process (SQLite, NATS off —
the access log still goes to its outbox), and the load generator in a third process so no two of them share a
GIL. 32 concurrent callers by default (``BENCH_CONCURRENCY``).

Targets (issue 4): gateway throughput >= 70% of direct vault; p99 added by the gateway <= 5 ms.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from bench.common import (
    BenchDatabases,
    Figures,
    on_each_database,
    run_in_client_process,
    summarise,
    timed_calls,
)

CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))
N_PUT = int(os.environ.get("BENCH_GW_PUTS", "3000"))
N_GET = int(os.environ.get("BENCH_GW_GETS", "4000"))
N_ECHO = int(os.environ.get("BENCH_GW_ECHO", "6000"))
N_SERIAL = int(os.environ.get("BENCH_GW_SERIAL", "500"))
N_EIGHT = int(os.environ.get("BENCH_GW_EIGHT", "1500"))
WARMUP = 200
PUT_METHOD = "/steward.vault.v1.VaultService/PutRecord"
GET_METHOD = "/steward.vault.v1.VaultService/GetRecord"


def _put_request(i: int) -> bytes:
    from steward.vault.v1 import vault_pb2 as pb

    record = pb.NewRecord(kind=pb.RECORD_KIND_NOTE)
    record.data.update(
        {
            "text": "Asked for a demo of the reporting module; follow up after the quarterly review.",
            "stage": "qualified",
            "value_inr": 125000 + i,
            "tags": ["enterprise", "north"],
        }
    )
    return pb.PutRecordRequest(record=record).SerializeToString()


async def client_put(port: int, metadata: list[tuple[str, str]], total: int, concurrency: int) -> dict[str, Any]:
    """PutRecord ``total`` times; returns latencies and the stored record ids."""
    from steward.vault.v1 import vault_pb2 as pb

    md = tuple(tuple(pair) for pair in metadata)
    ids: list[str] = []
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        put = channel.unary_unary(PUT_METHOD)
        for i in range(WARMUP):
            await put(_put_request(i), metadata=md, timeout=30)
        payloads = [_put_request(i) for i in range(total)]

        async def call(i: int) -> None:
            reply = await put(payloads[i], metadata=md, timeout=30)
            ids.append(pb.PutRecordResponse.FromString(reply).record.id)

        latencies, seconds = await timed_calls(call, total, concurrency)
    return {"latencies": latencies, "seconds": seconds, "ids": ids}


async def client_get(
    port: int, metadata: list[tuple[str, str]], ids: list[str], total: int, concurrency: int
) -> dict[str, Any]:
    """GetRecord ``total`` times over ``ids``."""
    from steward.vault.v1 import vault_pb2 as pb

    md = tuple(tuple(pair) for pair in metadata)
    requests = [pb.GetRecordRequest(record_id=ids[i % len(ids)]).SerializeToString() for i in range(total)]
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        get = channel.unary_unary(GET_METHOD)
        for i in range(min(WARMUP, total)):
            await get(requests[i], metadata=md, timeout=30)

        async def call(i: int) -> None:
            await get(requests[i], metadata=md, timeout=30)

        latencies, seconds = await timed_calls(call, total, concurrency)
    return {"latencies": latencies, "seconds": seconds}


async def start_echo_server() -> tuple[aio.Server, int]:
    """A bare grpc.aio server answering PutRecord/GetRecord with a fixed reply: the floor of gRPC Python."""
    from steward.vault.v1 import vault_pb2 as pb

    put_reply = pb.PutRecordResponse(record=pb.Record(id="00000000-0000-0000-0000-000000000001")).SerializeToString()
    get_reply = pb.GetRecordResponse(record=pb.Record(id="00000000-0000-0000-0000-000000000001")).SerializeToString()

    async def put(_request: bytes, _context: aio.ServicerContext) -> bytes:
        return put_reply

    async def get(_request: bytes, _context: aio.ServicerContext) -> bytes:
        return get_reply

    handler = grpc.method_handlers_generic_handler(
        "steward.vault.v1.VaultService",
        {"PutRecord": grpc.unary_unary_rpc_method_handler(put), "GetRecord": grpc.unary_unary_rpc_method_handler(get)},
    )

    async def create_tenant(_request: bytes, _context: aio.ServicerContext) -> bytes:
        return b""  # an empty CreateTenantResponse, so the gateway can provision a tenant in front of the echo

    admin = grpc.method_handlers_generic_handler(
        "steward.vault.v1.VaultAdminService", {"CreateTenant": grpc.unary_unary_rpc_method_handler(create_tenant)}
    )
    server = aio.server()
    server.add_generic_rpc_handlers((handler, admin))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def start_gateway_process(
    workdir: Path, name: str, upstream_port: int, jwks_file: Path, issuer: str, audience: str, database_url: str
):
    """The gateway as its own process (its database at ``database_url``), in front of ``upstream_port``."""
    from tests.integration.gateway.support import PEPPER, REGISTRY_KEY
    from tests.plugins.infra import free_port, wait_for_port

    port = free_port()
    env = {
        **os.environ,
        "STEWARD_GATEWAY__DATABASE_URL": database_url,
        "STEWARD_GATEWAY__API_KEY_PEPPER": PEPPER,
        "STEWARD_GATEWAY__REGISTRY_KEY": REGISTRY_KEY,
        "STEWARD_GATEWAY__ENV": "bench",
        "STEWARD_GATEWAY__GRPC__PORT": str(port),
        "STEWARD_GATEWAY__UPSTREAMS__VAULT__ADDRESS": f"127.0.0.1:{upstream_port}",
        "STEWARD_GATEWAY__JWT__JWKS_FILE": str(jwks_file),
        "STEWARD_GATEWAY__JWT__ISSUER": issuer,
        "STEWARD_GATEWAY__JWT__AUDIENCE": audience,
        "STEWARD_GATEWAY__NATS__ENABLED": "false",
        "STEWARD_GATEWAY__RATE_LIMITS__TENANT_RPS": "1000000",
        "STEWARD_GATEWAY__RATE_LIMITS__TENANT_BURST": "1000000",
        "STEWARD_GATEWAY__LOG_LEVEL": "WARNING",
    }
    log = open(workdir / f"{name}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "services.gateway.main"], env=env, stdout=log, stderr=log)
    wait_for_port(port, timeout_s=60, proc=proc)
    return proc, port


def start_bare_proxy_process(upstream_port: int) -> tuple[subprocess.Popen[bytes], int]:
    """``bench.bare_proxy`` in its own process (as the gateway is) in front of ``upstream_port``."""
    from tests.plugins.infra import free_port, wait_for_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.bare_proxy", str(port), str(upstream_port)])
    wait_for_port(port, timeout_s=60, proc=proc)
    return proc, port


async def provision(gateway_port: int, admin_token: str) -> tuple[str, str]:
    """Create a tenant (and its vault) through the gateway and an API key for it; (tenant id, token)."""
    from steward.gateway.v1 import gateway_pb2, gateway_pb2_grpc

    from tests.integration.gateway.support import sample_details

    md = (("authorization", f"Bearer {admin_token}"),)
    async with aio.insecure_channel(f"127.0.0.1:{gateway_port}") as channel:
        admin = gateway_pb2_grpc.GatewayAdminServiceStub(channel)
        tenant = await admin.CreateTenant(
            gateway_pb2.CreateTenantRequest(details=sample_details("Bench Ltd")), metadata=md
        )
        key = await admin.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(
                tenant_id=tenant.tenant.tenant_id, name="bench", scopes=["records:read", "records:write"]
            ),
            metadata=md,
        )
    return tenant.tenant.tenant_id, key.token


def _print(rows: list[Figures]) -> None:
    header = f"{'path':<40}{'method':<11}{'ops':>7}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        path, method = row.name.rsplit(" ", 1)
        print(f"{path:<40}{method:<11}{row.ops:>7}{row.ops_per_s:>10.1f}{row.p50_ms:>9.2f}{row.p99_ms:>9.2f}")


async def run() -> dict[str, Any]:
    """Every phase on each database (SQLite, and PostgreSQL when reachable: ``BENCH_DATABASES``)."""
    return await on_each_database("gateway", run_on, {"cpu_count": os.cpu_count()})


async def run_on(dbs: BenchDatabases, bao: Any) -> dict[str, Any]:
    """Every phase on one database (vault's and gateways'); prints the table and the targets; returns the figures."""
    from services.chassis.identity import CallerIdentity, identity_metadata
    from services.vault.main import create_server
    from services.vault.settings import VaultSettings
    from tests.integration.gateway.support import AUDIENCE, ISSUER, TestIdP

    workdir = Path(tempfile.mkdtemp(prefix="steward-gw-bench-"))
    idp = TestIdP(workdir)
    vault_settings = VaultSettings(
        database_url=dbs.url("vault"),
        tombstone_database_url=dbs.url("ledger"),
        transit={"url": bao.url, "token": bao.token},
        nats={"enabled": False},
        trust_identity_metadata=True,
    )
    vault, vault_port = await create_server(vault_settings, port=0)
    echo, echo_port = await start_echo_server()
    gateway, gateway_port = start_gateway_process(
        workdir, "gateway", vault_port, idp.jwks_file, ISSUER, AUDIENCE, dbs.url("gateway")
    )
    echo_gateway, echo_gateway_port = start_gateway_process(
        workdir, "gateway-echo", echo_port, idp.jwks_file, ISSUER, AUDIENCE, dbs.url("gateway_echo")
    )
    bare_proxy, bare_proxy_port = start_bare_proxy_process(echo_port)
    rows: list[Figures] = []

    async def phase(name: str, target: Any, *args: Any) -> dict[str, Any]:
        result = await asyncio.to_thread(run_in_client_process, target, *args)
        rows.append(summarise(name, result["latencies"], result["seconds"]))
        return result

    try:
        admin_token = idp.token("bench-admin", ["ops:admin"])
        tenant, token = await provision(gateway_port, admin_token)
        _echo_tenant, echo_token = await provision(echo_gateway_port, admin_token)
        direct_md = [list(pair) for pair in identity_metadata(CallerIdentity(tenant_id=tenant, principal="bench"))]
        gateway_md = [["authorization", f"Bearer {token}"]]
        echo_gateway_md = [["authorization", f"Bearer {echo_token}"]]

        # Interleaved so slow drift (SQLite growth, page cache) hits both vault paths alike.
        direct_put = await phase("vault direct PutRecord", client_put, vault_port, direct_md, N_PUT, CONCURRENCY)
        gw_put = await phase("gateway -> vault PutRecord", client_put, gateway_port, gateway_md, N_PUT, CONCURRENCY)
        ids = direct_put["ids"] + gw_put["ids"]
        await phase("vault direct GetRecord", client_get, vault_port, direct_md, ids, N_GET, CONCURRENCY)
        await phase("gateway -> vault GetRecord", client_get, gateway_port, gateway_md, ids, N_GET, CONCURRENCY)
        # One caller at a time: no queueing, so the difference is the gateway hop itself.
        await phase("vault direct, 1 caller PutRecord", client_put, vault_port, direct_md, N_SERIAL, 1)
        await phase("gateway -> vault, 1 caller PutRecord", client_put, gateway_port, gateway_md, N_SERIAL, 1)
        await phase("vault direct, 1 caller GetRecord", client_get, vault_port, direct_md, ids, N_SERIAL, 1)
        await phase("gateway -> vault, 1 caller GetRecord", client_get, gateway_port, gateway_md, ids, N_SERIAL, 1)
        # Eight callers: the p99 the gateway adds under moderate load (issue 14: <= 5 ms).
        await phase("vault direct, 8 callers PutRecord", client_put, vault_port, direct_md, N_EIGHT, 8)
        await phase("gateway -> vault, 8 callers PutRecord", client_put, gateway_port, gateway_md, N_EIGHT, 8)
        await phase("vault direct, 8 callers GetRecord", client_get, vault_port, direct_md, ids, N_EIGHT, 8)
        await phase("gateway -> vault, 8 callers GetRecord", client_get, gateway_port, gateway_md, ids, N_EIGHT, 8)
        await phase("bare echo server PutRecord", client_put, echo_port, [], N_ECHO, CONCURRENCY)
        await phase("bare echo server GetRecord", client_get, echo_port, [], ["x"], N_ECHO, CONCURRENCY)
        await phase("gateway -> echo PutRecord", client_put, echo_gateway_port, echo_gateway_md, N_ECHO, CONCURRENCY)
        await phase(
            "gateway -> echo GetRecord", client_get, echo_gateway_port, echo_gateway_md, ["x"], N_ECHO, CONCURRENCY
        )
        # The floor of any grpc.aio proxy: bytes forwarded, nothing else (bench/bare_proxy.py).
        await phase("bare proxy -> echo PutRecord", client_put, bare_proxy_port, [], N_ECHO, CONCURRENCY)
        await phase("bare proxy -> echo GetRecord", client_get, bare_proxy_port, [], ["x"], N_ECHO, CONCURRENCY)
    finally:
        for proc in (gateway, echo_gateway, bare_proxy):
            proc.terminate()
        for proc in (gateway, echo_gateway, bare_proxy):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        await echo.stop(0)
        await vault.stop(0)

    by_name = {row.name: row for row in rows}
    print(
        f"\n=== Gateway benchmark on {dbs.label} (loopback, {os.cpu_count()} cores, {CONCURRENCY} concurrent callers; "
        "vault, gateway and load generator in separate processes) ==="
    )
    _print(rows)
    checks: dict[str, float] = {}
    print(
        f"\nTargets on {dbs.label}: gateway throughput >= 70% of direct vault (issue 14: >= 85%); p99 added by the "
        "gateway <= 5 ms; issue 14: gateway -> echo / bare echo >= 0.6, vault direct / bare echo >= 0.5"
    )
    for method in ("PutRecord", "GetRecord"):
        direct = by_name[f"vault direct {method}"]
        through = by_name[f"gateway -> vault {method}"]
        echo_direct = by_name[f"bare echo server {method}"]
        echo_through = by_name[f"gateway -> echo {method}"]
        ratio = through.ops_per_s / direct.ops_per_s
        added = through.p99_ms - direct.p99_ms
        checks[f"{method}_throughput_ratio"] = ratio
        checks[f"{method}_p99_added_ms"] = added
        checks[f"{method}_echo_p99_added_ms"] = echo_through.p99_ms - echo_direct.p99_ms
        serial_added = (
            by_name[f"gateway -> vault, 1 caller {method}"].p50_ms - by_name[f"vault direct, 1 caller {method}"].p50_ms
        )
        checks[f"{method}_serial_p50_added_ms"] = serial_added
        eight_added = (
            by_name[f"gateway -> vault, 8 callers {method}"].p99_ms
            - by_name[f"vault direct, 8 callers {method}"].p99_ms
        )
        checks[f"{method}_8_callers_p99_added_ms"] = eight_added
        checks[f"{method}_gateway_echo_over_echo"] = echo_through.ops_per_s / echo_direct.ops_per_s
        checks[f"{method}_vault_over_echo"] = direct.ops_per_s / echo_direct.ops_per_s
        bare_proxy_through = by_name[f"bare proxy -> echo {method}"]
        checks[f"{method}_bare_proxy_echo_over_echo"] = bare_proxy_through.ops_per_s / echo_direct.ops_per_s
        checks[f"{method}_gateway_echo_over_bare_proxy_echo"] = echo_through.ops_per_s / bare_proxy_through.ops_per_s
        verdict = "met" if ratio >= 0.7 and added <= 5.0 else "NOT met"
        print(
            f"  {method:<10} gateway/direct throughput {ratio * 100:5.1f}%   p99 added {added:+7.2f} ms   "
            f"(1 caller: p50 added {serial_added:+.2f} ms)   -> {verdict}"
        )
        print(
            f"  {'':<10} 8 callers: p99 added {eight_added:+.2f} ms   "
            f"gateway->echo / bare echo {checks[f'{method}_gateway_echo_over_echo']:.2f}   "
            f"vault direct / bare echo {checks[f'{method}_vault_over_echo']:.2f}"
        )
        print(
            f"  {'':<10} floor of any grpc.aio proxy: bare proxy->echo / bare echo "
            f"{checks[f'{method}_bare_proxy_echo_over_echo']:.2f}   "
            f"gateway->echo / bare proxy->echo {checks[f'{method}_gateway_echo_over_bare_proxy_echo']:.2f}"
        )
    return {"rows": [row.row() for row in rows], "checks": checks}


def main() -> None:
    """Entry point."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    started = time.perf_counter()
    asyncio.run(run())
    print(f"(took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
