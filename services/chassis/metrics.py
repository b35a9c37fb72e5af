"""Service metrics: OpenTelemetry instruments read out in Prometheus text format on ``/metrics``.

Every service gets the same series through :class:`~services.chassis.runtime.ServiceRuntime`, with no
code of its own: the runtime creates one :class:`ServiceMetrics` per service (its own meter provider and
Prometheus registry, so two services in one process — tests, ``steward run`` — never mix their series),
serves it on ``settings.metrics.port`` and registers each resource as it starts it: databases (pool in
use), the outbox relay (pending rows, age of the oldest), consumers (pending, redelivered,
dead-lettered), the gRPC server (per-RPC counter and latency, certificate expiry). The vault adds its
Transit client and DEK cache with :meth:`ServiceMetrics.watch_transit` and
:meth:`ServiceMetrics.watch_key_cache`.

Cost: the per-RPC path is one dict update and one bucket increment on label sets built once per
(method, code), outside the OpenTelemetry SDK (:class:`RpcCounter`, :class:`RpcHistogram`); everything
else is an observable read at scrape time, each bounded (the outbox count stops at
:data:`OUTBOX_COUNT_CAP`, NATS and Transit probes have timeouts). Labels hold method, consumer,
database and breaker names only — never tenant ids or customer data.

:data:`METRIC_NAMES` is the one list of exported Prometheus series; the alert rules in
``deploy/k8s/components/observability`` may only use names from it (a test checks), and README.md
documents each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from cryptography import x509
from grpc import aio
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, Metric, start_http_server
from prometheus_client.utils import floatToGoString
from sqlalchemy import func, select

from services.chassis.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from services.chassis.clock import SYSTEM_CLOCK
from services.chassis.rpc import MethodWrappingInterceptor, rebuild_handler
from services.chassis.settings import MetricsSettings

if TYPE_CHECKING:
    from services.chassis.bus import Consumer
    from services.chassis.db import Database

__all__ = [
    "BREAKER_STATE_VALUES",
    "LATENCY_BUCKETS_S",
    "METRIC_NAMES",
    "OUTBOX_COUNT_CAP",
    "HistogramSeries",
    "RpcCounter",
    "RpcHistogram",
    "RpcMetricsInterceptor",
    "ServedCertificate",
    "ServiceMetrics",
]

log = logging.getLogger("steward.metrics")

# The exported Prometheus series (histograms also export _bucket/_sum/_count; README.md has the table).
RPC_REQUESTS = "steward_rpc_requests_total"
RPC_DURATION = "steward_rpc_duration_seconds"
OUTBOX_PENDING = "steward_outbox_pending_rows"
OUTBOX_OLDEST_AGE = "steward_outbox_oldest_age_seconds"
CONSUMER_PENDING = "steward_consumer_pending_messages"
CONSUMER_ACK_PENDING = "steward_consumer_ack_pending_messages"
CONSUMER_REDELIVERED = "steward_consumer_redelivered_messages"
CONSUMER_DEAD_LETTERED = "steward_consumer_dead_lettered_total"
CONSUMER_HANDLED = "steward_consumer_handled_total"
TRANSIT_REQUESTS = "steward_transit_requests_total"
TRANSIT_DURATION = "steward_transit_request_duration_seconds"
TRANSIT_SEALED = "steward_transit_sealed"
TRANSIT_UP = "steward_transit_up"
BREAKER_STATE = "steward_circuit_breaker_state"
DEK_CACHE_HITS = "steward_dek_cache_hits_total"
DEK_CACHE_MISSES = "steward_dek_cache_misses_total"
DEK_CACHE_HIT_RATIO = "steward_dek_cache_hit_ratio"
DEK_CACHE_ENTRIES = "steward_dek_cache_entries"
CERT_EXPIRY = "steward_tls_certificate_expiry_seconds"
TLS_RELOAD_FAILURES = "steward_tls_reload_failures_total"
DB_POOL_IN_USE = "steward_db_pool_connections_in_use"
DB_POOL_SIZE = "steward_db_pool_size"
DSR_OVERDUE = "steward_dsr_overdue_requests"
DSR_OPEN = "steward_dsr_open_requests"
NOTIFY_DEFERRALS = "steward_notify_deferrals_total"
LEGAL_REVIEWS_DUE = "steward_legal_reviews_due_total"

METRIC_NAMES: tuple[str, ...] = (
    RPC_REQUESTS,
    RPC_DURATION,
    OUTBOX_PENDING,
    OUTBOX_OLDEST_AGE,
    CONSUMER_PENDING,
    CONSUMER_ACK_PENDING,
    CONSUMER_REDELIVERED,
    CONSUMER_DEAD_LETTERED,
    CONSUMER_HANDLED,
    TRANSIT_REQUESTS,
    TRANSIT_DURATION,
    TRANSIT_SEALED,
    TRANSIT_UP,
    BREAKER_STATE,
    DEK_CACHE_HITS,
    DEK_CACHE_MISSES,
    DEK_CACHE_HIT_RATIO,
    DEK_CACHE_ENTRIES,
    CERT_EXPIRY,
    DB_POOL_IN_USE,
    DB_POOL_SIZE,
    DSR_OVERDUE,
    DSR_OPEN,
    NOTIFY_DEFERRALS,
    LEGAL_REVIEWS_DUE,
    TLS_RELOAD_FAILURES,
)
"""Every Prometheus series a Steward service exports (later services append theirs)."""

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram bounds in seconds (OpenTelemetry's default bounds are milliseconds-shaped)."""

BREAKER_STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
"""``steward_circuit_breaker_state``: 0 closed, 1 half-open, 2 open."""

OUTBOX_COUNT_CAP = 100_000
"""The outbox pending count stops here, so a scrape during a long outage stays a bounded index read."""

PROBE_TIMEOUT_S = 2.0
"""How long a scrape waits for one NATS consumer-info answer."""

SNAPSHOT_REUSE_S = 1.0
"""Within one scrape, gauges that share a remote answer (consumer info, Transit health) reuse it."""

_HEALTH_PREFIX = "/grpc.health.v1.Health/"


# --------------------------------------------------------------------------- what the watchers read


class HitCounting(Protocol):
    """A cache that counts its hits and misses (the vault's DekCache)."""

    hits: int
    misses: int

    def __len__(self) -> int: ...


class ServedCertificate(Protocol):
    """A certificate that may change while running (``tls_reload``): the one in use and failed reloads."""

    @property
    def certificate(self) -> x509.Certificate | None: ...

    failures: int


class TransitLike(Protocol):
    """What the Transit watcher needs: a breaker, a call observer slot and a seal probe."""

    breaker: CircuitBreaker
    call_observer: Callable[[str, str, float], None] | None

    def health_status(self) -> int | None: ...


# --------------------------------------------------------------------------- the per-RPC interceptor


class RpcCounter:
    """``steward_rpc_requests_total``: counts by label set, kept in a plain dict (no SDK work per call).

    OpenTelemetry's ``Counter.add`` cost about 6 µs per call (attribute hashing, locks, exemplar
    filtering); this is one dict update. :class:`_RpcCollector` reads it at scrape time.
    """

    def __init__(self) -> None:
        self.values: dict[tuple[tuple[str, str], ...], float] = {}

    def add(self, amount: float, attributes: dict[str, str]) -> None:
        """Add ``amount`` to the series of ``attributes`` (the OpenTelemetry counter's signature)."""
        self.inc(tuple(sorted(attributes.items())), amount)

    def inc(self, key: tuple[tuple[str, str], ...], amount: float = 1) -> None:
        """Add to the series of a prepared (sorted) label tuple."""
        values = self.values
        values[key] = values.get(key, 0) + amount


class HistogramSeries:
    """One label set of a histogram: bucket counts (the last one is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound is >= it (Prometheus' ``le``)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class RpcHistogram:
    """``steward_rpc_duration_seconds``: a histogram per label set, with :data:`LATENCY_BUCKETS_S`."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self.series: dict[tuple[tuple[str, str], ...], HistogramSeries] = {}

    def series_for(self, attributes: dict[str, str]) -> HistogramSeries:
        """The series of ``attributes``, created on first use."""
        key = tuple(sorted(attributes.items()))
        found = self.series.get(key)
        if found is None:
            found = self.series[key] = HistogramSeries(self.bounds)
        return found

    def record(self, value: float, attributes: dict[str, str]) -> None:
        """Observe ``value`` for ``attributes`` (the OpenTelemetry histogram's signature)."""
        self.series_for(attributes).observe(value)


class _RpcCollector:
    """Exports :class:`RpcCounter` and :class:`RpcHistogram` on the service's registry, as the OpenTelemetry
    exporter did (same names, labels, buckets and ``service_name``)."""

    def __init__(self, service: str, requests: RpcCounter, duration: RpcHistogram) -> None:
        self._service = service
        self._requests = requests
        self._duration = duration
        self._le = [floatToGoString(bound) for bound in duration.bounds] + ["+Inf"]

    def describe(self) -> list[Metric]:
        return []  # names are checked by the registry at collect time; nothing to reserve

    def collect(self) -> Iterable[Metric]:
        service = self._service
        counts = list(self._requests.values.items())  # a copy: calls add series on the event loop thread
        if counts:
            family = Metric(RPC_REQUESTS[: -len("_total")], "gRPC calls served, by final status code", "counter")
            for key, value in counts:
                family.add_sample(RPC_REQUESTS, {**dict(key), "service_name": service}, float(value))
            yield family
        histograms = list(self._duration.series.items())
        if histograms:
            family = Metric(RPC_DURATION, "gRPC call latency, from the first interceptor", "histogram")
            for key, series in histograms:
                labels = {**dict(key), "service_name": service}
                buckets, total = list(series.counts), series.total
                cumulative = 0
                for le, count in zip(self._le, buckets, strict=True):
                    cumulative += count
                    family.add_sample(f"{RPC_DURATION}_bucket", {**labels, "le": le}, float(cumulative))
                family.add_sample(f"{RPC_DURATION}_count", labels, float(cumulative))
                family.add_sample(f"{RPC_DURATION}_sum", labels, total)
            yield family


class RpcMetricsInterceptor(MethodWrappingInterceptor):
    """Counts every RPC by (service, method, final status code) and records its latency; installed outermost.

    Outermost, so it sees the status the caller gets: domain errors already mapped, peer and admission
    refusals included. Health checks are not counted (probes would drown the real traffic). Each method's
    handler is wrapped once (:meth:`wrap_handler`, folded with the other chassis wrappers by
    :class:`~services.chassis.rpc.ComposedInterceptor`); per call it costs a clock read, a dict update and a
    bucket increment on label sets prepared per method.
    """

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._requests = metrics.rpc_requests
        self._duration = metrics.rpc_duration

    def _recorder(self, method: str) -> Callable[[float, grpc.StatusCode | None], None]:
        service, _, name = method.lstrip("/").partition("/")
        base = {"grpc_service": service, "grpc_method": name}
        histogram = self._duration.series_for(base)
        inc = self._requests.inc
        keys: dict[grpc.StatusCode | None, tuple[tuple[str, str], ...]] = {}
        perf_counter = time.perf_counter

        def done(started: float, code: grpc.StatusCode | None) -> None:
            key = keys.get(code)
            if key is None:
                key = keys[code] = tuple(sorted({**base, "grpc_code": code.name if code is not None else "OK"}.items()))
            inc(key)
            histogram.observe(perf_counter() - started)

        return done

    def wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` with counting and timing around it (health checks are left alone)."""
        if method.startswith(_HEALTH_PREFIX):
            return handler
        done = self._recorder(method)
        perf_counter = time.perf_counter

        def wrap(behaviour: Callable[..., Any], _request_streaming: bool, response_streaming: bool) -> Any:
            if response_streaming:

                async def streaming(request: Any, context: aio.ServicerContext) -> Any:
                    started = perf_counter()
                    try:
                        async for item in behaviour(request, context):
                            yield item
                    except BaseException as exc:
                        done(started, _code_of(exc, context))
                        raise
                    done(started, context.code())

                return streaming

            async def unary(request: Any, context: aio.ServicerContext) -> Any:
                started = perf_counter()
                try:
                    response = await behaviour(request, context)
                except BaseException as exc:
                    done(started, _code_of(exc, context))
                    raise
                done(started, context.code())
                return response

            return unary

        return rebuild_handler(handler, wrap)


def _code_of(exc: BaseException, context: aio.ServicerContext) -> grpc.StatusCode:
    """The status a call that raised ends with: the aborted code, CANCELLED, or UNKNOWN (what grpc sends)."""
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK else grpc.StatusCode.UNKNOWN


# --------------------------------------------------------------------------- one service's metrics


class ServiceMetrics:
    """One service's instruments, its Prometheus registry and (once :meth:`serve` ran) its ``/metrics`` server."""

    def __init__(self, service: str, settings: MetricsSettings) -> None:
        self.service = service
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=True)
        self._reader = PrometheusMetricReader(
            disable_target_info=True,
            scope_info_enabled=False,
            resource_attribute_filter=lambda key: key == "service.name",
            registry=self.registry,
        )
        self.provider = MeterProvider(
            resource=Resource.create({"service.name": service}),
            metric_readers=[self._reader],
            shutdown_on_exit=False,  # stopped by the runtime; an atexit hook would keep every test's provider alive
            views=[
                View(
                    instrument_type=Histogram,
                    aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_S),
                )
            ],
        )
        self._meter = self.provider.get_meter("steward")
        # The per-RPC series are kept outside the SDK (the hot path) and exported by their own collector.
        self.rpc_requests = RpcCounter()
        self.rpc_duration = RpcHistogram(LATENCY_BUCKETS_S)
        self.registry.register(_RpcCollector(service, self.rpc_requests, self.rpc_duration))
        self.transit_requests = self._meter.create_counter(
            _base(TRANSIT_REQUESTS), description="Transit calls by operation and outcome"
        )
        self.transit_duration = self._meter.create_histogram(
            _base(TRANSIT_DURATION), unit="s", description="Transit call latency (HTTP round trip)"
        )
        self._databases: dict[str, Database] = {}
        self._outboxes: list[Database] = []
        self._consumers: list[tuple[Consumer, asyncio.AbstractEventLoop]] = []
        self._breakers: dict[str, CircuitBreaker] = {}
        self._transits: list[TransitLike] = []
        self._caches: dict[str, HitCounting] = {}
        self._certificates: dict[str, Path | ServedCertificate] = {}
        self._probes: dict[int, tuple[float, int | None]] = {}
        self._infos: dict[int, tuple[float, Any]] = {}
        self._server: Any = None
        self._thread: Any = None
        self.port: int | None = None
        self._observe(OUTBOX_PENDING, self._read_outbox_pending, "Outbox rows not yet published to NATS")
        self._observe(OUTBOX_OLDEST_AGE, self._read_outbox_age, "Age of the oldest unpublished outbox row", "s")
        self._observe(CONSUMER_PENDING, self._read_consumer(lambda i: i.num_pending), "Messages not yet delivered")
        self._observe(
            CONSUMER_ACK_PENDING, self._read_consumer(lambda i: i.num_ack_pending), "Delivered, not yet acknowledged"
        )
        self._observe(
            CONSUMER_REDELIVERED, self._read_consumer(lambda i: i.num_redelivered), "Unacked messages redelivered"
        )
        self._observe_counter(CONSUMER_DEAD_LETTERED, self._read_consumer_stat("dead_lettered"), "Events dead-lettered")
        self._observe_counter(CONSUMER_HANDLED, self._read_consumer_stat("handled"), "Events applied")
        self._observe(BREAKER_STATE, self._read_breakers, "Circuit breaker state: 0 closed, 1 half-open, 2 open")
        self._observe(TRANSIT_SEALED, self._read_transit(lambda status: status == 503), "1 when Transit is sealed")
        self._observe(TRANSIT_UP, self._read_transit(lambda status: status == 200), "1 when Transit is serving")
        self._observe_counter(DEK_CACHE_HITS, self._read_caches(lambda c: c.hits), "DEK cache hits")
        self._observe_counter(DEK_CACHE_MISSES, self._read_caches(lambda c: c.misses), "DEK cache misses")
        self._observe(DEK_CACHE_HIT_RATIO, self._read_caches(_hit_ratio), "DEK cache hits / lookups since start")
        self._observe(DEK_CACHE_ENTRIES, self._read_caches(len), "DEKs held in memory")
        self._observe(CERT_EXPIRY, self._read_certificates, "Seconds until the served certificate expires", "s")
        self._observe_counter(
            TLS_RELOAD_FAILURES, self._read_reload_failures, "Changed TLS files that did not load (old ones kept)"
        )
        self._observe(DB_POOL_IN_USE, self._read_pools(lambda pool: pool.checkedout()), "Connections checked out")
        self._observe(DB_POOL_SIZE, self._read_pools(lambda pool: pool.size()), "Connection pool size")

    # ------------------------------------------------------------------ serving

    def counter(self, name: str, description: str) -> Any:
        """A service-specific counter on this registry; ``name`` is its Prometheus name (ending in ``_total``), one of
        :data:`METRIC_NAMES` so alert rules can rely on it."""
        if name not in METRIC_NAMES:
            raise ValueError(f"{name} is not in METRIC_NAMES; add it there first")
        return self._meter.create_counter(_base(name), description=description)

    def serve(self, host: str) -> int | None:
        """Start the ``/metrics`` HTTP server (plaintext, one thread) when a port is configured; returns it."""
        if self.settings.port is None:
            return None
        self._server, self._thread = start_http_server(
            self.settings.port, addr=self.settings.host or host, registry=self.registry
        )
        self.port = int(self._server.server_port)
        log.info("metrics listening", extra={"port": self.port})
        return self.port

    def scrape(self) -> str:
        """The Prometheus text exposition, as ``/metrics`` serves it (tests without a port use this)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def close(self) -> None:
        """Stop the HTTP server and the meter provider."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None
        self.provider.shutdown()

    # ------------------------------------------------------------------ what the runtime registers

    def interceptor(self) -> RpcMetricsInterceptor:
        """The per-RPC interceptor for this service's gRPC server."""
        return RpcMetricsInterceptor(self)

    def watch_database(self, name: str, db: Database) -> None:
        """Report ``db``'s connection pool (in use, size) as ``database=name``."""
        self._databases[name] = db

    def watch_outbox(self, db: Database) -> None:
        """Report the outbox of ``db``: pending rows and the age of the oldest."""
        self._outboxes.append(db)

    def watch_consumer(self, consumer: Consumer) -> None:
        """Report a consumer: pending/ack-pending/redelivered (from JetStream at scrape), dead-lettered/handled."""
        self._consumers.append((consumer, asyncio.get_running_loop()))

    def watch_certificate(self, name: str, source: Path | ServedCertificate | None) -> None:
        """Report the seconds until a certificate expires: the one a reloader serves now (and its failed reloads),
        or for a plain path the file, re-read at each scrape."""
        if source is not None:
            self._certificates[name] = source

    def watch_breaker(self, name: str, breaker: CircuitBreaker) -> None:
        """Report a circuit breaker's state."""
        self._breakers[name] = breaker

    def watch_key_cache(self, name: str, cache: HitCounting) -> None:
        """Report a key cache's hits, misses, hit ratio and size as ``cache=name``."""
        self._caches[name] = cache

    def watch_transit(self, transit: TransitLike) -> None:
        """Report Transit: per-call latency and outcome, breaker state, and the seal state probed at scrape."""
        self._transits.append(transit)
        self.watch_breaker("transit", transit.breaker)
        requests, duration = self.transit_requests, self.transit_duration
        labels: dict[tuple[str, str], dict[str, str]] = {}

        def observe_call(op: str, outcome: str, seconds: float) -> None:
            attributes = labels.get((op, outcome))
            if attributes is None:
                attributes = labels[(op, outcome)] = {"operation": op, "outcome": outcome}
            requests.add(1, attributes)
            duration.record(seconds, {"operation": op})

        transit.call_observer = observe_call

    def watch_gauge(
        self, name: str, read: Callable[[], Iterable[tuple[float, dict[str, str]]]], description: str
    ) -> None:
        """Report a service's own gauge ``name`` (one of :data:`METRIC_NAMES`), read at each scrape as
        (value, labels) pairs. Labels never name a tenant or a person."""
        if name not in METRIC_NAMES:
            raise ValueError(f"{name} is not in METRIC_NAMES: add it there first")
        self._observe(name, lambda: (Observation(value, labels) for value, labels in read()), description)

    # ------------------------------------------------------------------ scrape-time readers

    def _observe(self, name: str, read: Callable[[], Iterable[Observation]], description: str, unit: str = "") -> None:
        self._meter.create_observable_gauge(
            _base(name), callbacks=[_guarded(name, read)], unit=unit, description=description
        )

    def _observe_counter(self, name: str, read: Callable[[], Iterable[Observation]], description: str) -> None:
        self._meter.create_observable_counter(_base(name), callbacks=[_guarded(name, read)], description=description)

    def _read_outbox_pending(self) -> Iterable[Observation]:
        from services.chassis.bus import OutboxEntry

        table = OutboxEntry.__table__
        pending = select(table.c.id).where(table.c.published_at.is_(None)).limit(OUTBOX_COUNT_CAP).subquery()
        for db in self._outboxes:
            with db.engine.connect() as connection:
                yield Observation(connection.execute(select(func.count()).select_from(pending)).scalar_one())

    def _read_outbox_age(self) -> Iterable[Observation]:
        from services.chassis.bus import OutboxEntry

        table = OutboxEntry.__table__
        oldest_query = select(func.min(table.c.created_at)).where(table.c.published_at.is_(None))
        for db in self._outboxes:
            with db.engine.connect() as connection:
                oldest = connection.execute(oldest_query).scalar_one()
            if oldest is None:
                yield Observation(0.0)
                continue
            if oldest.tzinfo is None:  # SQLite hands back naive datetimes; the outbox writes UTC
                oldest = oldest.replace(tzinfo=UTC)
            yield Observation(max(0.0, (SYSTEM_CLOCK.now() - oldest).total_seconds()))

    def _probe(self, transit: TransitLike) -> int | None:
        # Two gauges read the same probe: one Transit health call per scrape, not one per gauge.
        key, now = id(transit), time.monotonic()
        cached = self._probes.get(key)
        if cached is None or now - cached[0] > SNAPSHOT_REUSE_S:
            cached = self._probes[key] = (now, transit.health_status())
        return cached[1]

    def _info(self, consumer: Consumer, loop: asyncio.AbstractEventLoop) -> Any:
        # Three gauges read the same consumer info: one NATS request per consumer per scrape.
        key, now = id(consumer), time.monotonic()
        cached = self._infos.get(key)
        if cached is None or now - cached[0] > SNAPSHOT_REUSE_S:
            cached = self._infos[key] = (now, _consumer_info(consumer, loop))
        return cached[1]

    def _read_consumer(self, field: Callable[[Any], int | None]) -> Callable[[], Iterable[Observation]]:
        def read() -> Iterable[Observation]:
            for consumer, loop in self._consumers:
                info = self._info(consumer, loop)
                if info is not None:
                    yield Observation(field(info) or 0, {"consumer": consumer.durable})

        return read

    def _read_consumer_stat(self, field: str) -> Callable[[], Iterable[Observation]]:
        def read() -> Iterable[Observation]:
            for consumer, _loop in self._consumers:
                yield Observation(getattr(consumer.stats, field), {"consumer": consumer.durable})

        return read

    def _read_breakers(self) -> Iterable[Observation]:
        for name, breaker in self._breakers.items():
            yield Observation(BREAKER_STATE_VALUES[breaker.state], {"breaker": name})

    def _read_transit(self, test: Callable[[int], bool]) -> Callable[[], Iterable[Observation]]:
        def read() -> Iterable[Observation]:
            for transit in self._transits:
                status = self._probe(transit)
                if status is not None:  # unreachable: no sample (an absent series), not a guess
                    yield Observation(1 if test(status) else 0)

        return read

    def _read_caches(self, value: Callable[[HitCounting], float]) -> Callable[[], Iterable[Observation]]:
        def read() -> Iterable[Observation]:
            for name, cache in self._caches.items():
                yield Observation(value(cache), {"cache": name})

        return read

    def _read_certificates(self) -> Iterable[Observation]:
        now = SYSTEM_CLOCK.now()
        for name, source in self._certificates.items():
            if isinstance(source, Path):
                certificate: x509.Certificate | None = x509.load_pem_x509_certificate(source.read_bytes())
            else:
                certificate = source.certificate
            if certificate is not None:
                yield Observation((certificate.not_valid_after_utc - now).total_seconds(), {"certificate": name})

    def _read_reload_failures(self) -> Iterable[Observation]:
        for name, source in self._certificates.items():
            if not isinstance(source, Path):
                yield Observation(source.failures, {"certificate": name})

    def _read_pools(self, value: Callable[[Any], int]) -> Callable[[], Iterable[Observation]]:
        def read() -> Iterable[Observation]:
            for name, db in self._databases.items():
                yield Observation(value(db.engine.pool), {"database": name})

        return read


def _base(name: str) -> str:
    """The OpenTelemetry instrument name whose Prometheus translation is ``name``.

    The exporter appends ``_total`` to counters and the unit (``_seconds``) to instruments that have one,
    so instruments are created without those suffixes and :data:`METRIC_NAMES` lists what Prometheus sees.
    """
    for suffix in ("_total", "_seconds"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _hit_ratio(cache: HitCounting) -> float:
    lookups = cache.hits + cache.misses
    return cache.hits / lookups if lookups else 0.0


def _guarded(
    name: str, read: Callable[[], Iterable[Observation]]
) -> Callable[[CallbackOptions], Sequence[Observation]]:
    """A scrape callback that logs and skips a failing reader: one broken source must not empty ``/metrics``."""

    def callback(_options: CallbackOptions) -> Sequence[Observation]:
        try:
            return list(read())
        except Exception as exc:
            log.warning("metric read failed; series skipped", extra={"metric": name, "error_type": type(exc).__name__})
            return []

    return callback


def _consumer_info(consumer: Consumer, loop: asyncio.AbstractEventLoop) -> Any:
    """JetStream's view of ``consumer`` (asked on the service's loop from the scrape thread), or None."""
    if loop.is_closed():
        return None
    future = asyncio.run_coroutine_threadsafe(consumer.info(), loop)
    try:
        return future.result(PROBE_TIMEOUT_S)
    except Exception:
        future.cancel()
        return None
