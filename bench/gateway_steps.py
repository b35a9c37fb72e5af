"""What each step of the gateway costs per call: a table for whoever optimises the gateway's hot path.

``python -m bench.gateway_steps [--n N] [--rounds R] [--total-calls C] [--no-total] [--no-layers] [--out FILE]``

Two parts, both on this machine, both in CPU time (``thread_time`` / the process's utime+stime), which holds
up far better than wall time on a shared machine:

1. Each step in isolation, in this process, over ``N`` iterations (median of ``R`` rounds; warm-up excluded),
   built from the gateway's own classes with the settings ``make bench`` uses: API-key authentication on a
   cache hit (token parse, cache lookup, HMAC, expiry), the scope check, the rate limiter, the deadline, the
   access-log entry (on the call, and its share of the flush), the outbound metadata (identity and trace
   context), the caller context variable, the admission interceptor's dispatch and its whole ``around``
   block (admission + access log, as run per call), and the forwarding call itself (a unary call to a bare
   echo server in another process, 32 in flight: the client side of the hop).
2. With ``--total`` (default on): the real gateway in its own process in front of the same bare echo server
   (in another process), 32 callers from a third process: the gateway process's CPU per call, and the bare
   echo server's CPU per call (the gRPC server floor). The gateway's total minus the echo floor, minus the
   forwarding client call, minus the steps, leaves what the steps do not cover (the chassis interceptors:
   metrics, OpenTelemetry, error mapping, request decoding; and the event loop).
3. With ``--layers`` (default on): those uncovered layers measured: a server process with the gateway's layers
   added one at a time from the inside out (admission, forwarding, request decoding, error mapping,
   OpenTelemetry, metrics: the gateway's own classes, its order), its CPU per call for each; the difference
   between rows is what that layer costs. Rounds are interleaved so load drift hits every row alike.

One run's output: bench/results/gateway-steps-<date>.txt.
"""

# ruff: noqa: ASYNC240  -- a measuring script: blocking process and path calls between phases are fine

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PUT_METHOD = "/steward.vault.v1.VaultService/PutRecord"
FORWARD_CONCURRENCY = 32


class _Context:
    """The parts of ``aio.ServicerContext`` the gateway's steps read."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:53122"

    def time_remaining(self) -> float:
        return 29.9  # the benchmark's clients send a 30 s deadline

    def code(self) -> None:
        return None


@dataclass
class _Details:
    """``grpc.HandlerCallDetails`` as the server passes it to interceptors."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


@dataclass
class Step:
    name: str
    us: float  # CPU microseconds per call, median of rounds
    spread: float  # (max - min) / median over rounds
    note: str = ""


def _sync_step(fn: Callable[[], object], n: int, rounds: int) -> tuple[float, float]:
    for _ in range(min(n, 2000)):
        fn()
    per: list[float] = []
    for _ in range(rounds):
        started = time.thread_time_ns()
        for _ in range(n):
            fn()
        per.append((time.thread_time_ns() - started) / n / 1000)
    median = statistics.median(per)
    return median, (max(per) - min(per)) / median if median else 0.0


async def _async_step(fn: Callable[[], Awaitable[object]], n: int, rounds: int) -> tuple[float, float]:
    for _ in range(min(n, 2000)):
        await fn()
    per: list[float] = []
    for _ in range(rounds):
        started = time.thread_time_ns()
        for _ in range(n):
            await fn()
        per.append((time.thread_time_ns() - started) / n / 1000)
    median = statistics.median(per)
    return median, (max(per) - min(per)) / median if median else 0.0


def _serve_echo(ports: Any) -> None:
    """Child process: the bare echo server of gateway_bench until terminated."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    async def serve() -> None:
        from bench.gateway_bench import start_echo_server

        _server, port = await start_echo_server()
        ports.put(port)
        await asyncio.Event().wait()

    asyncio.run(serve())


class EchoProcess:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        self.process = context.Process(target=_serve_echo, args=(queue,), daemon=True)
        self.process.start()
        self.port = int(queue.get(timeout=120))

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(30)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_steps(n: int, rounds: int, echo_port: int) -> list[Step]:
    """Each gateway step in isolation, in this process."""
    from grpc import aio

    from services.chassis.identity import identity_metadata
    from services.chassis.telemetry import inject_headers
    from services.gateway import apikeys
    from services.gateway.accesslog import AccessLog
    from services.gateway.admission import AdmissionInterceptor, Gatekeeper, _bearer, _peer_host, _status_name
    from services.gateway.caller import Caller, acting_as, current_caller
    from services.gateway.forwarding import DeadlinePolicy, _outbound_metadata
    from services.gateway.policy import policy_for
    from services.gateway.ratelimit import RateLimiter

    pepper = b"bench-pepper-0123456789abcdef0123456789"
    key_id, secret, token = apikeys._new_token("bench")
    tenant = "t-00000000-0000-0000-0000-000000000001"
    verified = apikeys.VerifiedKey(
        key_id=key_id,
        tenant_id=tenant,
        scopes=frozenset({"records:read", "records:write"}),
        secret_hash=apikeys.hash_secret(pepper, key_id, secret),
        expires_at=None,
        revoked_at=None,
    )
    keys = apikeys.ApiKeyAuthenticator(None, pepper, ttl_s=1e12)  # type: ignore[arg-type]
    keys._cache[key_id] = (verified, time.monotonic())  # a cache hit, as on every call but the first per TTL
    # The limits gateway_bench runs with (effectively unlimited: the bucket arithmetic still runs per call).
    limiter = RateLimiter(tenant_rps=1e6, tenant_burst=10**6, operator_rps=100, operator_burst=200)
    gate = Gatekeeper(db=None, keys=keys, operators=None, limiter=limiter)  # type: ignore[arg-type]
    access_log = AccessLog(None, flush_s=1.0, max_buffer=10**9)  # type: ignore[arg-type]
    deadlines = DeadlinePolicy(default_cap_s=30.0, caps_s={})
    metadata = (("authorization", f"Bearer {token}"), ("user-agent", "grpc-python-asyncio/1.x"))
    context = _Context(metadata)
    policy = policy_for(PUT_METHOD)
    assert policy is not None
    caller = await gate.admit(PUT_METHOD, metadata, "ipv4:127.0.0.1")
    interceptor = AdmissionInterceptor(gate, access_log)

    import grpc

    async def echo_handler(request: bytes, _context: Any) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo_handler)

    async def continuation(_details: Any) -> grpc.RpcMethodHandler:
        return handler

    details = _Details(PUT_METHOD, metadata)
    around = interceptor._around(PUT_METHOD)
    steps: list[Step] = []

    def sync(name: str, fn: Callable[[], object], note: str = "") -> None:
        us, spread = _sync_step(fn, n, rounds)
        steps.append(Step(name, us, spread, note))

    async def run_async(name: str, fn: Callable[[], Awaitable[object]], note: str = "") -> None:
        us, spread = await _async_step(fn, n, rounds)
        steps.append(Step(name, us, spread, note))

    def clear_log() -> None:
        access_log._buffer.clear()

    # --- authentication (cache hit) and its parts
    sync("authorization header parse (_bearer)", lambda: _bearer(metadata))
    sync("route policy lookup (policy_for)", lambda: policy_for(PUT_METHOD))
    sync("  token parse + checksum (parse_token)", lambda: apikeys.parse_token(token))
    sync("  HMAC-SHA256 of the secret (hash_secret)", lambda: apikeys.hash_secret(pepper, key_id, secret))
    now = datetime.now(UTC)
    sync("  expiry check (usable)", lambda: verified.usable(now))
    await run_async("API-key authentication, cache hit (authenticate)", lambda: keys.authenticate(token))
    # --- authorization
    sync("scope check (policy.scopes & key.scopes)", lambda: policy.scopes.intersection(verified.scopes))
    sync(
        "Caller object built",
        lambda: Caller(
            kind="api_key",
            principal=f"apikey:{key_id}",
            tenant_id=tenant,
            credential_id=key_id,
            scopes=verified.scopes,
            expires_at=None,
        ),
    )
    # --- rate limiting
    sync("rate limiter (check tenant bucket)", lambda: limiter.check("tenant", tenant))
    sync(
        "failed-auth guard (refuse_if_failing + _peer_host)",
        lambda: limiter.refuse_if_failing(_peer_host(context.peer())),
    )
    # --- the whole admission (the above together)
    await run_async("Gatekeeper.admit (all of the above)", lambda: gate.admit(PUT_METHOD, metadata, "ipv4:127.0.0.1"))
    # --- deadline
    sync("deadline (DeadlinePolicy.timeout)", lambda: deadlines.timeout(PUT_METHOD, context))  # type: ignore[arg-type]
    # --- access log
    counter = [0]

    def record() -> None:
        access_log.record(caller, PUT_METHOD, "OK", 0.0012)
        counter[0] += 1
        if counter[0] % 100_000 == 0:
            clear_log()

    sync("access-log entry on the call (record)", record)
    stamp = datetime.now(UTC)
    sync(
        "access-log entry at flush (AccessEntry proto)",
        lambda: AccessLog._entry(stamp, caller, PUT_METHOD, "OK", 1200),
        "off the call, same event loop",
    )
    clear_log()
    sync("status name for the log (_status_name)", lambda: _status_name(None, context))  # type: ignore[arg-type]
    # --- metadata building
    sync("  identity metadata (identity_metadata)", lambda: identity_metadata(caller.identity()))
    sync("  trace context (inject_headers)", lambda: inject_headers())
    sync("outbound metadata (_outbound_metadata)", lambda: _outbound_metadata(caller))

    # --- caller context
    def act() -> None:
        with acting_as(caller):
            current_caller()

    sync("caller context variable (acting_as + current_caller)", act)
    # --- interceptor plumbing
    await run_async(
        "admission interceptor dispatch (memo hit)",
        lambda: interceptor.intercept_service(continuation, details),  # type: ignore[arg-type]
    )

    async def whole() -> None:
        async with around(context):  # type: ignore[arg-type]
            pass
        if len(access_log._buffer) > 100_000:
            clear_log()

    await run_async("admission around block, whole (admit + log)", whole)
    clear_log()

    # --- forwarding: the client side of the hop, 32 in flight, to an echo server in another process
    from bench.gateway_bench import _put_request

    payload = _put_request(1)
    outbound = _outbound_metadata(caller)
    async with aio.insecure_channel(f"127.0.0.1:{echo_port}") as channel:
        call = channel.unary_unary(PUT_METHOD)

        async def forward_batch(total: int) -> None:
            it = iter(range(total))

            async def worker() -> None:
                for _ in it:
                    await call(payload, metadata=outbound, timeout=30)

            await asyncio.gather(*(worker() for _ in range(FORWARD_CONCURRENCY)))

        await forward_batch(500)
        per: list[float] = []
        forward_n = max(500, n // 20)
        for _ in range(rounds):
            started = time.process_time()
            await forward_batch(forward_n)
            per.append((time.process_time() - started) / forward_n * 1e6)
        median = statistics.median(per)
        steps.append(
            Step(
                "forwarding: upstream unary call, client side",
                median,
                (max(per) - min(per)) / median,
                f"process CPU incl. gRPC threads, {FORWARD_CONCURRENCY} in flight",
            )
        )
    return steps


async def measure_total(n: int, echo: EchoProcess) -> dict[str, float]:
    """The real gateway process's CPU per call in front of the echo server, and the echo server's own."""
    from bench.common import run_in_client_process
    from bench.gateway_bench import client_put, provision, start_gateway_process
    from tests.integration.gateway.support import AUDIENCE, ISSUER, TestIdP

    workdir = Path(tempfile.mkdtemp(prefix="steward-gw-steps-"))
    idp = TestIdP(workdir)
    gateway, port = start_gateway_process(
        workdir, "gateway", echo.port, idp.jwks_file, ISSUER, AUDIENCE, f"sqlite:///{workdir / 'gateway.db'}"
    )
    try:
        _tenant, token = await provision(port, idp.token("bench-admin", ["ops:admin"]))
        md = [["authorization", f"Bearer {token}"]]
        # warm-up (client_put also does 200 of its own, not measured below: we count all of them)
        await asyncio.to_thread(run_in_client_process, client_put, port, md, 500, FORWARD_CONCURRENCY)
        g0, e0 = _cpu_s(gateway.pid), _cpu_s(echo.process.pid)
        await asyncio.to_thread(run_in_client_process, client_put, port, md, n, FORWARD_CONCURRENCY)
        calls = n + 200  # client_put's own warm-up calls go through both processes too
        gateway_us = (_cpu_s(gateway.pid) - g0) / calls * 1e6
        echo_us = (_cpu_s(echo.process.pid) - e0) / calls * 1e6
        # the bare echo server alone, same load, for the floor
        e1 = _cpu_s(echo.process.pid)
        await asyncio.to_thread(run_in_client_process, client_put, echo.port, [], n, FORWARD_CONCURRENCY)
        echo_alone_us = (_cpu_s(echo.process.pid) - e1) / (n + 200) * 1e6
    finally:
        gateway.terminate()
        try:
            gateway.wait(15)
        except subprocess.TimeoutExpired:
            gateway.kill()
    return {
        "gateway_cpu_us_per_call": gateway_us,
        "echo_cpu_us_behind_gateway": echo_us,
        "echo_cpu_us_alone": echo_alone_us,
    }


LAYERS = ["admission", "forwarding", "request decoding", "error mapping", "OpenTelemetry", "metrics"]


def _serve_layers(count: int, upstream_port: int, out: Any) -> None:
    """Child process: a gRPC server with the gateway's first ``count`` layers (innermost first) around PutRecord.

    0 layers: a bare echo handler. Then, added one by one in the gateway's order from the inside out: the
    admission interceptor (API-key cache hit, rate limiter, access log), the forwarding handler (replaces the
    echo: a pass-through call to the echo server at ``upstream_port``), request decoding, error mapping,
    OpenTelemetry's server interceptor (as the gateway sets it up: no exporter, so spans are not sampled),
    and the metrics interceptor. With all six it is the gateway's chain for PutRecord.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    async def serve() -> None:
        import grpc
        from grpc import aio
        from steward.vault.v1 import vault_pb2

        from bench.gateway_bench import start_echo_server
        from services.chassis.errors import ErrorMappingInterceptor
        from services.chassis.grpc_server import RequestDecodingInterceptor
        from services.chassis.metrics import ServiceMetrics
        from services.chassis.settings import MetricsSettings
        from services.chassis.telemetry import setup_telemetry
        from services.gateway import apikeys
        from services.gateway.accesslog import AccessLog
        from services.gateway.admission import AdmissionInterceptor, Gatekeeper
        from services.gateway.forwarding import DeadlinePolicy, ForwardedService, Forwarder
        from services.gateway.ratelimit import RateLimiter

        setup_telemetry("gateway")
        enabled = LAYERS[:count]
        pepper = b"bench-pepper-0123456789abcdef0123456789"
        key_id, secret, token = apikeys._new_token("bench")
        keys = apikeys.ApiKeyAuthenticator(None, pepper, ttl_s=1e12)  # type: ignore[arg-type]
        keys._cache[key_id] = (
            apikeys.VerifiedKey(
                key_id=key_id,
                tenant_id="t-bench",
                scopes=frozenset({"records:read", "records:write"}),
                secret_hash=apikeys.hash_secret(pepper, key_id, secret),
                expires_at=None,
                revoked_at=None,
            ),
            time.monotonic(),
        )
        limiter = RateLimiter(tenant_rps=1e6, tenant_burst=10**6, operator_rps=100, operator_burst=200)
        gate = Gatekeeper(db=None, keys=keys, operators=None, limiter=limiter)  # type: ignore[arg-type]
        access_log = AccessLog(None, flush_s=1.0, max_buffer=10**7)  # type: ignore[arg-type]

        async def drain() -> None:  # the flush's in-memory part (protos built), without a database
            while True:
                await asyncio.sleep(1.0)
                batch, access_log._buffer = access_log._buffer, []
                for item in batch:
                    AccessLog._entry(*item)

        drainer = asyncio.create_task(drain())
        interceptors: list[aio.ServerInterceptor] = []
        if "metrics" in enabled:
            interceptors.append(ServiceMetrics("gateway", MetricsSettings()).interceptor())
        if "OpenTelemetry" in enabled:
            from opentelemetry.instrumentation.grpc import aio_server_interceptor

            interceptors.append(aio_server_interceptor())
        if "error mapping" in enabled:
            interceptors.append(ErrorMappingInterceptor())
        if "admission" in enabled:
            interceptors.append(AdmissionInterceptor(gate, access_log))
        if "request decoding" in enabled:
            interceptors.append(RequestDecodingInterceptor())
        server = aio.server(interceptors=interceptors)
        channel = None
        if "forwarding" in enabled:
            channel = aio.insecure_channel(f"127.0.0.1:{upstream_port}")

            class _Upstreams:
                def channel(self, _name: str) -> aio.Channel:
                    return channel  # type: ignore[return-value]

            forwarder = Forwarder(_Upstreams(), DeadlinePolicy(default_cap_s=30.0, caps_s={}))  # type: ignore[arg-type]
            service = ForwardedService("vault", vault_pb2.DESCRIPTOR.services_by_name["VaultService"])
            server.add_generic_rpc_handlers((forwarder.handler_for(service),))
        else:
            echo, _port = await start_echo_server()  # only for its reply bytes; stopped at once
            await echo.stop(0)
            reply = vault_pb2.PutRecordResponse(record=vault_pb2.Record(id="0" * 36)).SerializeToString()

            async def put(_request: bytes, _context: aio.ServicerContext) -> bytes:
                return reply

            server.add_generic_rpc_handlers(
                (
                    grpc.method_handlers_generic_handler(
                        "steward.vault.v1.VaultService", {"PutRecord": grpc.unary_unary_rpc_method_handler(put)}
                    ),
                )
            )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        out.put((port, token))
        await asyncio.Event().wait()
        drainer.cancel()

    asyncio.run(serve())


async def measure_layers(calls: int, rounds: int, echo: EchoProcess) -> list[tuple[str, float]]:
    """Server-process CPU per call with 0..6 of the gateway's layers (median of ``rounds``, interleaved)."""
    from bench.common import run_in_client_process
    from bench.gateway_bench import client_put

    results: dict[int, list[float]] = {}
    for round_no in range(rounds):
        for count in range(len(LAYERS) + 1):
            context = multiprocessing.get_context("spawn")
            queue = context.Queue()
            process = context.Process(target=_serve_layers, args=(count, echo.port, queue), daemon=True)
            process.start()
            try:
                port, token = queue.get(timeout=120)
                md = [["authorization", f"Bearer {token}"]]
                await asyncio.to_thread(run_in_client_process, client_put, port, md, 500, FORWARD_CONCURRENCY)
                before = _cpu_s(process.pid)
                await asyncio.to_thread(run_in_client_process, client_put, port, md, calls, FORWARD_CONCURRENCY)
                per_call = (_cpu_s(process.pid) - before) / (calls + 200) * 1e6
            finally:
                process.terminate()
                process.join(30)
            results.setdefault(count, []).append(per_call)
            print(f"  round {round_no} layers {count}: {per_call:8.1f} µs/call", flush=True)
    return [
        ("bare gRPC server, echo handler" if count == 0 else f"+ {LAYERS[count - 1]}", statistics.median(values))
        for count, values in sorted(results.items())
    ]


def _print(
    steps: list[Step], total: dict[str, float] | None, layers: list[tuple[str, float]] | None, n: int, rounds: int
) -> str:
    lines = [
        f"Gateway per-step cost (CPU µs per call; {n} iterations x {rounds} rounds, median; spread = (max-min)/median; "
        f"{os.cpu_count()} cores)",
        f"{'step':<56}{'µs/call':>10}{'spread':>9}{'% of gw':>9}  note",
    ]
    lines.append("-" * len(lines[-1]))
    gw = total["gateway_cpu_us_per_call"] if total else 0.0
    for step in steps:
        share = f"{step.us / gw * 100:8.1f}%" if gw else f"{'':>9}"
        lines.append(f"{step.name:<56}{step.us:>10.2f}{step.spread:>8.0%} {share}  {step.note}")
    if total:
        forward = next(s.us for s in steps if s.name.startswith("forwarding"))
        whole = next(s.us for s in steps if s.name.startswith("admission around block"))
        dispatch = next(s.us for s in steps if s.name.startswith("admission interceptor dispatch"))
        outbound = next(s.us for s in steps if s.name.startswith("outbound metadata"))
        deadline = next(s.us for s in steps if s.name.startswith("deadline"))
        act = next(s.us for s in steps if s.name.startswith("caller context"))
        flush = next(s.us for s in steps if s.name.startswith("access-log entry at flush"))
        covered = forward + whole + dispatch + outbound + deadline + act + flush
        floor = total["echo_cpu_us_alone"]
        lines += [
            "",
            "Whole gateway (real process, in front of the bare echo server, 32 callers from another process):",
            f"  gateway process CPU per call                        {gw:10.1f} µs",
            f"  bare echo server CPU per call (gRPC server floor)   {floor:10.1f} µs",
            "  steps above on the call path (around block, dispatch, deadline, metadata, caller context,",
            f"    forwarding client side, flush share)              {covered:10.1f} µs",
            f"  not covered by the steps (gw - floor - steps)       {gw - floor - covered:10.1f} µs"
            "   <- chassis interceptors (metrics, OpenTelemetry, error mapping, request decoding), event loop",
        ]
    if layers:
        lines += [
            "",
            "Layer by layer (a server process with the gateway's layers added one at a time, inside out; CPU of that",
            "process per PutRecord, 32 callers from another process, median of rounds; from '+ forwarding' on the rows",
            "include the upstream call's client side):",
            f"{'server':<40}{'µs/call':>10}{'added':>10}",
        ]
        previous = None
        for name, us in layers:
            added = "" if previous is None else f"{us - previous:+10.1f}"
            lines.append(f"{name:<40}{us:>10.1f}{added:>10}")
            previous = us
    text = "\n".join(lines)
    print(text)
    return text


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--total-calls", type=int, default=6000)
    parser.add_argument("--no-total", action="store_true")
    parser.add_argument("--no-layers", action="store_true")
    parser.add_argument("--layer-rounds", type=int, default=3)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    echo = EchoProcess()
    try:
        steps = await measure_steps(args.n, args.rounds, echo.port)
        total = None if args.no_total else await measure_total(args.total_calls, echo)
        layers = None if args.no_layers else await measure_layers(args.total_calls, args.layer_rounds, echo)
    finally:
        echo.stop()
    text = _print(steps, total, layers, args.n, args.rounds)
    if args.out:
        Path(args.out).write_text(text + "\n")
    with contextlib.suppress(Exception):
        from bench.common import save_results

        save_results("gateway_steps", {"steps": [s.__dict__ for s in steps], "total": total, "layers": layers})


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    asyncio.run(main())
