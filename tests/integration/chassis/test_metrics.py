"""ServiceMetrics read at scrape time: outbox (bounded), key caches, Transit, breakers, certificates, DB pools.

Sources are watched directly (no service around them) and read through ``scrape()``, the exposition the
``/metrics`` endpoint serves; the endpoint itself and the per-RPC series are covered end to end by
tests/integration/gateway/test_metrics.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from steward.events.v1 import events_pb2

from services.chassis import metrics as metrics_module
from services.chassis.bus import enqueue_many, make_event
from services.chassis.circuit import CircuitBreaker
from services.chassis.clock import ManualClock
from services.chassis.db import Base, Database
from services.chassis.metrics import (
    DSR_OPEN,
    DSR_OVERDUE,
    LEGAL_REVIEWS_DUE,
    METRIC_NAMES,
    NOTIFY_DEFERRALS,
    ServiceMetrics,
)
from services.chassis.settings import MetricsSettings
from tests.plugins.scraping import sample, samples


class FakeTransit:
    """The parts of a Transit client the watcher reads."""

    def __init__(self, status: int | None = 200) -> None:
        self.breaker = CircuitBreaker(failure_threshold=1, reset_after_s=60, clock=ManualClock())
        self.call_observer: Callable[[str, str, float], None] | None = None
        self.status = status
        self.probes = 0

    def health_status(self) -> int | None:
        self.probes += 1
        return self.status


class ReloadedCertificate:
    """What a certificate reloader shows the metrics: the certificate in use and failed reloads."""

    certificate = None
    failures = 0


class Cache:
    def __init__(self, hits: int, misses: int, size: int) -> None:
        self.hits, self.misses, self.size = hits, misses, size

    def __len__(self) -> int:
        return self.size


@pytest.fixture
def metrics() -> Iterator[ServiceMetrics]:
    service = ServiceMetrics("test", MetricsSettings())
    yield service
    service.close()


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Database]:
    database = Database(sqlite_url)
    Base.metadata.create_all(database.engine)
    yield database
    database.close()


def _certificate(path: Path, valid_for: dt.timedelta) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vault")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + valid_for)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _stage(db: Database, count: int) -> None:
    events = [make_event(events_pb2.TenantCreated(tenant_id=f"t{i}"), source="vault") for i in range(count)]
    with db.transaction() as session:
        enqueue_many(session, events)


def test_outbox_gauges_count_pending_rows_up_to_the_cap(
    metrics: ServiceMetrics, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics.watch_outbox(db)
    empty = samples(metrics.scrape())
    assert sample(empty, "steward_outbox_pending_rows") == 0
    assert sample(empty, "steward_outbox_oldest_age_seconds") == 0

    monkeypatch.setattr(metrics_module, "OUTBOX_COUNT_CAP", 3)
    _stage(db, 5)
    found = samples(metrics.scrape())
    assert sample(found, "steward_outbox_pending_rows") == 3
    assert (sample(found, "steward_outbox_oldest_age_seconds") or -1) >= 0


def test_certificate_expiry_is_read_from_the_file_at_each_scrape(metrics: ServiceMetrics, tmp_path: Path) -> None:
    cert_file = tmp_path / "tls.crt"
    _certificate(cert_file, dt.timedelta(days=10))
    metrics.watch_certificate("grpc_server", cert_file)
    ten_days = sample(samples(metrics.scrape()), "steward_tls_certificate_expiry_seconds", certificate="grpc_server")
    assert ten_days is not None and 10 * 86400 - 120 < ten_days <= 10 * 86400

    _certificate(cert_file, dt.timedelta(days=90))  # what a cert-manager renewal does to the mounted file
    renewed = sample(samples(metrics.scrape()), "steward_tls_certificate_expiry_seconds", certificate="grpc_server")
    assert renewed is not None and renewed > 89 * 86400


def test_transit_watcher_reports_calls_seal_state_and_breaker(metrics: ServiceMetrics) -> None:
    transit = FakeTransit(status=503)
    metrics.watch_transit(transit)
    assert transit.call_observer is not None
    transit.call_observer("encrypt", "ok", 0.004)
    transit.call_observer("encrypt", "sealed", 0.002)
    transit.breaker.record_failure()

    found = samples(metrics.scrape())
    assert sample(found, "steward_transit_requests_total", operation="encrypt", outcome="ok") == 1
    assert sample(found, "steward_transit_requests_total", operation="encrypt", outcome="sealed") == 1
    assert sample(found, "steward_transit_request_duration_seconds_count", operation="encrypt") == 2
    assert sample(found, "steward_transit_sealed") == 1
    assert sample(found, "steward_transit_up") == 0
    assert sample(found, "steward_circuit_breaker_state", breaker="transit") == 2
    assert transit.probes == 1  # both seal gauges share one health probe per scrape


def test_unreachable_transit_leaves_the_seal_gauges_absent(metrics: ServiceMetrics) -> None:
    metrics.watch_transit(FakeTransit(status=None))
    found = samples(metrics.scrape())
    assert sample(found, "steward_transit_up") is None
    assert sample(found, "steward_transit_sealed") is None


def test_key_cache_ratio_and_pool_gauges(metrics: ServiceMetrics, db: Database) -> None:
    metrics.watch_key_cache("dek", Cache(hits=3, misses=1, size=2))
    metrics.watch_database("database_url", db)
    found = samples(metrics.scrape())
    assert sample(found, "steward_dek_cache_hit_ratio", cache="dek") == 0.75
    assert sample(found, "steward_dek_cache_hits_total", cache="dek") == 3
    assert sample(found, "steward_dek_cache_entries", cache="dek") == 2
    with db.engine.connect():
        held = samples(metrics.scrape())
    assert sample(held, "steward_db_pool_connections_in_use", database="database_url") == 1
    assert sample(found, "steward_db_pool_size", database="database_url") == 8


def test_a_failing_source_is_skipped_and_the_rest_still_served(metrics: ServiceMetrics, tmp_path: Path) -> None:
    metrics.watch_certificate("grpc_server", tmp_path / "missing.crt")
    metrics.watch_key_cache("dek", Cache(hits=1, misses=0, size=1))
    found = samples(metrics.scrape())
    assert sample(found, "steward_tls_certificate_expiry_seconds") is None
    assert sample(found, "steward_dek_cache_hit_ratio", cache="dek") == 1


def test_every_listed_name_is_what_prometheus_sees(metrics: ServiceMetrics, db: Database, tmp_path: Path) -> None:
    """METRIC_NAMES (which the alert rules are checked against) matches the exporter's naming."""
    cert_file = tmp_path / "tls.crt"
    _certificate(cert_file, dt.timedelta(days=10))
    transit = FakeTransit()
    metrics.watch_transit(transit)
    assert transit.call_observer is not None
    transit.call_observer("encrypt", "ok", 0.01)
    metrics.watch_key_cache("dek", Cache(1, 1, 1))
    metrics.watch_certificate("grpc_server", cert_file)
    metrics.watch_certificate("upstream_vault", ReloadedCertificate())
    metrics.watch_database("database_url", db)
    metrics.watch_outbox(db)
    metrics.rpc_requests.add(1, {"grpc_code": "OK"})
    metrics.rpc_duration.record(0.01, {})
    for gauge in (DSR_OVERDUE, DSR_OPEN):  # dsr's own gauges (read from its database in the service)
        metrics.watch_gauge(gauge, lambda: [(1.0, {"state": "IN_PROGRESS", "type": "ACCESS"})], "dsr requests")
    for counter in (NOTIFY_DEFERRALS, LEGAL_REVIEWS_DUE):  # notify's and the gateway's own counters
        metrics.counter(counter, "a service's counter").add(1, {})
    families = {name for name, _labels in samples(metrics.scrape())}
    consumer_series = {name for name in METRIC_NAMES if name.startswith("steward_consumer_")}  # need JetStream
    for name in set(METRIC_NAMES) - consumer_series:
        assert name in families or f"{name}_count" in families, name


def test_rpc_latency_buckets_are_cumulative_with_inclusive_bounds(metrics: ServiceMetrics) -> None:
    """The per-RPC histogram (kept outside the SDK) exports what Prometheus expects: ``le`` inclusive, cumulative
    buckets, ``_count`` equal to the +Inf bucket, and the sum."""
    labels = {"grpc_service": "pkg.Service", "grpc_method": "Call"}
    for seconds in (0.0005, 0.005, 0.2, 30.0):  # 0.005 sits exactly on a bound: it counts in le="0.005"
        metrics.rpc_duration.record(seconds, labels)
    metrics.rpc_requests.add(1, {**labels, "grpc_code": "OK"})
    found = samples(metrics.scrape())
    series = {**labels, "service_name": "test"}
    bucket = "steward_rpc_duration_seconds_bucket"
    assert sample(found, bucket, **series, le="0.001") == 1
    assert sample(found, bucket, **series, le="0.0025") == 1
    assert sample(found, bucket, **series, le="0.005") == 2
    assert sample(found, bucket, **series, le="0.25") == 3
    assert sample(found, bucket, **series, le="10.0") == 3
    assert sample(found, bucket, **series, le="+Inf") == 4
    assert sample(found, "steward_rpc_duration_seconds_count", **series) == 4
    assert sample(found, "steward_rpc_duration_seconds_sum", **series) == pytest.approx(30.2055)
    assert sample(found, "steward_rpc_requests_total", **series, grpc_code="OK") == 1
