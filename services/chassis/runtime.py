"""One way to run a service: :class:`ServiceRuntime` starts everything in order and stops it in reverse.

A service describes itself with one ``assemble(runtime)`` coroutine that asks the runtime for what it
needs, in the standard order — settings (already loaded), databases (migrated, or checked to be at
head when ``migrate_on_start`` is off), clients (Transit …), the bus (NATS connection and outbox
relay, then consumers), the gRPC server with health (with a service's blocking :class:`ReadyCheck`
run before it reports SERVING), then background tasks. Each resource is registered as a stop step
the moment it exists, so whatever was started — also by an ``assemble`` that failed halfway — is
stopped in reverse order, every step bounded by a timeout and logged and skipped when it hangs or
fails: shutdown always ends.

Outbox rows wake the relay themselves (:class:`~services.chassis.bus.OutboxRelay` listens for commits
of transactions that staged events), so no service passes a wake-up callback around.

:class:`BackgroundTask` is the one start/stop/crash-reporting shape for loops that run beside the
server (outbox relay, consumers, the gateway's access log and revocation listener). A task that
crashes is logged with its name and reported to the runtime, which turns health NOT_SERVING and ends
:meth:`ServiceRuntime.serve` with exit status 1 so the orchestrator restarts the process.

:func:`run_service` is a service's whole ``main()``: load settings, serve until SIGTERM, and on bad
settings (or a refusal to start) exit 2 with one line ``<service>: <message naming the variable>``.
:func:`start_service` is its ``create_server``: the same assembly on port 0 for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import grpc
from grpc import aio
from pydantic import SecretStr

from services.chassis.bus import Bus, Consumer, Handler, OutboxRelay
from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.db import Database
from services.chassis.errors import DomainError, abort_for
from services.chassis.grpc_server import RunningServer, build_server
from services.chassis.metrics import ServiceMetrics
from services.chassis.migrations import require_head, upgrade
from services.chassis.rpc import MethodWrappingInterceptor, wrap_rpc_behaviour
from services.chassis.settings import ServiceSettings, SettingsError, load_settings, variable_name
from services.chassis.tasks import BackgroundTask
from services.chassis.telemetry import setup_logging, setup_telemetry

__all__ = [
    "DEFAULT_STEP_TIMEOUT_S",
    "BackgroundTask",
    "ReadyCheck",
    "ServiceRuntime",
    "run_service",
    "start_service",
]

log = logging.getLogger("steward.runtime")

DEFAULT_STEP_TIMEOUT_S = 5.0
"""How long one shutdown step (other than the gRPC drain, which gets the grace period on top) may take."""

SettingsT = TypeVar("SettingsT", bound=ServiceSettings)
AppT = TypeVar("AppT")
TaskT = TypeVar("TaskT", bound=BackgroundTask)


class _Closable(Protocol):
    def close(self) -> object: ...


ClientT = TypeVar("ClientT", bound=_Closable)


@dataclass
class _StopStep:
    name: str
    action: Callable[[], Any]
    timeout_s: float
    adds_grace: bool = False


@dataclass(frozen=True, slots=True)
class ReadyCheck:
    """A start-up step the gRPC server waits for before it reports SERVING (:meth:`ServiceRuntime.serve_grpc`).

    While ``run()`` runs, health says NOT_SERVING and every other call is refused with ``refusal`` (an
    ``Unavailable`` whose reason tells clients why); if it raises, the service does not start.
    """

    name: str
    run: Callable[[], Awaitable[object]]
    refusal: DomainError


class _StartupGate(MethodWrappingInterceptor):
    """Refuses every call but health and reflection with the check's refusal until :meth:`open`."""

    _OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def __init__(self, refusal: DomainError) -> None:
        self._refusal: DomainError | None = refusal

    def open(self) -> None:
        """Let calls through from now on."""
        self._refusal = None

    def wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` refusing calls while the check runs (one test per call afterwards; health stays open)."""
        if self._refusal is None or method.startswith(self._OPEN_PREFIXES):
            return handler

        def unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            async def call(request: Any, context: aio.ServicerContext) -> Any:
                refusal = self._refusal
                if refusal is not None:
                    await abort_for(context, refusal)
                return await behaviour(request, context)

            return call

        def streaming(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            async def call(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                refusal = self._refusal
                if refusal is not None:
                    await abort_for(context, refusal)
                async for item in behaviour(request, context):
                    yield item

            return call

        return wrap_rpc_behaviour(handler, unary, streaming)


class ServiceRuntime(Generic[SettingsT]):
    """Owns a service's resources in start order and stops them in reverse, each step bounded in time.

    Use as ``async with ServiceRuntime("vault", settings) as runtime:`` (stops on exit) or through
    :meth:`start` (tests and benchmarks keep the runtime and call :meth:`stop`). ``port`` overrides
    ``settings.grpc.port`` (0 = any free port); ``clock`` is the one every part of the service reads
    (tests hand in a ManualClock).
    """

    def __init__(
        self,
        service: str,
        settings: SettingsT,
        *,
        port: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
        step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S,
    ) -> None:
        self.service = service
        self.settings = settings
        self.clock = clock
        self.step_timeout_s = step_timeout_s
        self.server: RunningServer | None = None
        self.bus: Bus | None = None
        self.relay: OutboxRelay | None = None
        self.crashed: list[BackgroundTask] = []
        self._port = port
        self._steps: list[_StopStep] = []
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._grace_s = settings.grpc.shutdown_grace_s
        self._health_update: asyncio.Task[None] | None = None  # kept referenced until it ran
        # Collected always (the benchmarks measure what production runs); served on settings.metrics.port.
        self.metrics = ServiceMetrics(service, settings.metrics)

    async def __aenter__(self) -> ServiceRuntime[SettingsT]:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound gRPC port (after :meth:`serve_grpc`)."""
        if self.server is None:
            raise RuntimeError("the gRPC server has not been started")
        return self.server.port

    async def start(self, assemble: Callable[[ServiceRuntime[SettingsT]], Awaitable[AppT]]) -> AppT:
        """Run ``assemble(self)``; if it fails, stop what it had started and re-raise."""
        try:
            return await assemble(self)
        except BaseException:
            await self.stop(0)
            raise

    # ------------------------------------------------------------------ resources, in start order

    def on_stop(self, name: str, action: Callable[[], Any], *, timeout_s: float | None = None) -> None:
        """Register a stop step (sync or async) run in reverse registration order by :meth:`stop`."""
        self._steps.append(_StopStep(name, action, self.step_timeout_s if timeout_s is None else timeout_s))

    async def database(self, field: str = "database_url", *, workers: int = 8, group_commit: bool = False) -> Database:
        """Open the database of setting ``field``; migrate it to head, or refuse to start when it is not there.

        ``group_commit``: on PostgreSQL too, writes share commits (see :class:`~services.chassis.db.Database`).

        With ``migrate_on_start`` off (the Kubernetes Job runs ``steward db upgrade``) a database behind
        the code raises :class:`~services.chassis.migrations.DatabaseNotMigrated` instead of migrating.
        """
        url = getattr(self.settings, field)
        db = Database(
            url.get_secret_value() if isinstance(url, SecretStr) else str(url),
            workers=workers,
            group_commit=group_commit,
        )
        self.on_stop(f"database {field}", db.close)
        self.metrics.watch_database(field, db)
        package = f"services.{self.service}"
        if self.settings.migrate_on_start:
            await db.call(upgrade, db, package)
        else:
            await db.call(require_head, db, self.service, variable_name(type(self.settings), (field,)))
        return db

    def client(self, name: str, client: ClientT) -> ClientT:
        """Register an outbound client (Transit, upstream channels); its ``close()`` (sync or async) runs on stop."""
        self.on_stop(name, client.close)
        return client

    async def start_bus(self, outbox_db: Database) -> Bus | None:
        """Connect to NATS and relay ``outbox_db``'s outbox; ``None`` when NATS is disabled in settings."""
        if not self.settings.nats.enabled:
            return None
        bus = Bus(self.settings.nats, name=self.service)
        await bus.start()
        self.metrics.watch_certificate("nats_client", bus.tls)  # follows reloads of the NATS client certificate
        self.on_stop("nats connection", bus.close)
        self.bus = bus
        self.relay = await self.task(OutboxRelay(outbox_db, bus))
        self.metrics.watch_outbox(outbox_db)
        return bus

    async def consume(
        self, db: Database, *, durable: str, subjects: Sequence[str], handler: Handler, concurrent: bool = False
    ) -> Consumer | None:
        """Start a durable consumer on the bus (:meth:`start_bus` first); ``None`` when NATS is disabled.
        ``concurrent``: a fetched batch shares one SQLite commit (see :class:`~services.chassis.bus.Consumer`)."""
        if self.bus is None:
            return None
        consumer = await self.task(
            Consumer(self.bus, db, durable=durable, subjects=subjects, handler=handler, concurrent=concurrent)
        )
        self.metrics.watch_consumer(consumer)
        return consumer

    async def serve_grpc(
        self,
        register: Callable[[aio.Server], Sequence[str]],
        *,
        trust_identity_metadata: bool = False,
        interceptors: Sequence[aio.ServerInterceptor] = (),
        ready: ReadyCheck | None = None,
    ) -> RunningServer:
        """Build, bind and start the gRPC server with health, and /metrics; on stop it drains in the grace period.

        With ``ready`` the server listens NOT_SERVING and refuses calls while the check runs, and returns
        once it passed and health says SERVING (probes can watch the wait; a client's first call is served).
        """
        self.metrics.serve(self.settings.grpc.host)
        self.on_stop("metrics endpoint", self.metrics.close)
        gate = None if ready is None else _StartupGate(ready.refusal)
        running = await build_server(
            self.settings.grpc,
            register=register,
            trust_identity_metadata=trust_identity_metadata,
            extra_interceptors=(*interceptors, *([gate] if gate else [])),
            outer_interceptors=[self.metrics.interceptor()],
            port=self._port,
            serving=ready is None,
        )
        self.server = running
        self.metrics.watch_certificate("grpc_server", running.tls)  # follows reloads of the served certificate

        async def drain() -> None:
            await running.shutdown(self._grace_s)

        self._steps.append(_StopStep("grpc server", drain, self.step_timeout_s, adds_grace=True))
        if ready is not None and gate is not None:
            log.info("not serving until the start-up check passes", extra={"check": ready.name})
            await ready.run()
            gate.open()
            await running.set_serving(True)
        return running

    async def task(self, task: TaskT) -> TaskT:
        """Start a background task; its crash is reported here, and it stops in reverse order."""
        task.on_crash(self._task_crashed)
        await task.start()
        self.on_stop(task.name, task.stop)
        return task

    # ------------------------------------------------------------------ running and stopping

    def request_stop(self) -> None:
        """Ask :meth:`serve` to return (what SIGTERM and SIGINT do)."""
        self._stop_requested.set()

    async def serve(self) -> int:
        """Serve until SIGTERM/SIGINT or a background task crashes, then stop; returns the exit status."""
        loop = asyncio.get_running_loop()
        # The handlers stay installed while stopping: a second signal must not kill the drain halfway.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._stop_requested.wait()
            await self.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return 1 if self.crashed else 0

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop everything in reverse start order; in-flight calls get ``grace_s`` (default from settings)."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_requested.set()
        if grace_s is not None:
            self._grace_s = grace_s
        # A start that failed before serving says why in one line (run_service); no shutdown chatter then.
        level = logging.INFO if self.server is not None else logging.DEBUG
        log.log(level, "shutting down", extra={"service": self.service, "grace_s": self._grace_s})
        while self._steps:
            step = self._steps.pop()
            limit = step.timeout_s + (self._grace_s if step.adds_grace else 0.0)
            await _bounded(step, limit)
        log.log(level, "stopped", extra={"service": self.service})

    def _task_crashed(self, task: BackgroundTask, _exc: BaseException) -> None:
        self.crashed.append(task)
        if self.server is not None and not self._stopping:
            # Probes see it at once; serve() then exits non-zero so the process is restarted.
            self._health_update = asyncio.get_running_loop().create_task(self.server.set_serving(False))
        self._stop_requested.set()


async def _bounded(step: _StopStep, limit_s: float) -> None:
    """Run one stop step; one that fails or outlives ``limit_s`` is logged and skipped."""
    try:
        if inspect.iscoroutinefunction(step.action):
            await asyncio.wait_for(step.action(), limit_s)
        else:
            await asyncio.wait_for(_in_daemon_thread(step.action), limit_s)
    except Exception as exc:
        log.warning(
            "shutdown step failed; skipped",
            extra={"step": step.name, "error_type": type(exc).__name__, "limit_s": limit_s},
        )


def _in_daemon_thread(action: Callable[[], Any]) -> asyncio.Future[Any]:
    """Run a blocking stop action (``Database.close``) where a hang cannot keep the process alive."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(outcome: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)

    def body() -> None:
        try:
            outcome = action()
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
            return
        loop.call_soon_threadsafe(settle, outcome, None)

    threading.Thread(target=body, name="runtime-stop-step", daemon=True).start()
    return future


async def start_service(
    service: str,
    settings: SettingsT,
    assemble: Callable[[ServiceRuntime[SettingsT]], Awaitable[AppT]],
    *,
    port: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> tuple[AppT, int]:
    """Assemble ``service`` on a new runtime and return ``(app, bound port)``: every ``create_server``.

    The caller stops it through the app (which holds the runtime); a failed start has stopped already.
    """
    runtime = ServiceRuntime(service, settings, port=port, clock=clock)
    app = await runtime.start(assemble)
    return app, runtime.port


def run_service(
    service: str,
    settings_cls: type[SettingsT],
    assemble: Callable[[ServiceRuntime[SettingsT]], Awaitable[object]],
) -> None:
    """A service process's ``main()``: load settings, assemble, serve until SIGTERM, exit.

    Exit status 0 after a clean stop, 1 when a background task crashed, 2 with one stderr line
    ``<service>: <message>`` when the settings are bad or start-up is refused (un-migrated database).
    """
    try:
        settings = load_settings(settings_cls)
    except SettingsError as exc:
        _refuse(service, exc)
    setup_logging(service, settings.log_level)
    setup_telemetry(service)
    try:
        status = asyncio.run(_serve(service, settings, assemble))
    except SettingsError as exc:
        _refuse(service, exc)
    raise SystemExit(status)


async def _serve(
    service: str, settings: SettingsT, assemble: Callable[[ServiceRuntime[SettingsT]], Awaitable[object]]
) -> int:
    async with ServiceRuntime(service, settings) as runtime:
        await assemble(runtime)
        log.info(f"{service} serving", extra={"port": runtime.port})
        return await runtime.serve()


def _refuse(service: str, exc: SettingsError) -> None:
    message = " ".join(str(exc).split())  # one line, whatever the message holds
    print(f"{service}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
