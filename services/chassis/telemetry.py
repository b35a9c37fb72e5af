"""OpenTelemetry and structured logging, configured once per process from ``OTEL_*`` variables.

Traces go to OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, to the console when
``OTEL_TRACES_EXPORTER=console``, and nowhere otherwise (spans still get ids, so logs carry them).
Logs are JSON lines with ``trace_id``/``span_id``. Trace context crosses NATS hops through
:func:`inject_headers` and :func:`extract_context`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import Token
from typing import Any, NamedTuple

import grpc
from grpc import aio
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from services.chassis.rpc import MethodWrappingInterceptor, wrap_rpc_behaviour

__all__ = [
    "JsonLogFormatter",
    "TracingInterceptor",
    "extract_context",
    "inject_headers",
    "setup_logging",
    "setup_telemetry",
]

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace ids and ``extra`` fields.

    Only ids and counts go into ``extra`` by convention; exception text is reduced to its type so a
    driver error echoing a value cannot leak it.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error_type"] = record.exc_info[0].__name__
            entry["stack"] = self._stack_without_values(record)
        return json.dumps(entry, default=str)

    @staticmethod
    def _stack_without_values(record: logging.LogRecord) -> list[str]:
        import traceback

        assert record.exc_info is not None
        frames = traceback.extract_tb(record.exc_info[2])
        return [f"{frame.filename}:{frame.lineno} in {frame.name}" for frame in frames]


def setup_logging(service: str, level: str = "INFO") -> None:
    """Route the root logger to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("alembic", "nats"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def setup_telemetry(service: str) -> TracerProvider:
    """Install tracer and meter providers for ``service`` according to ``OTEL_*`` variables."""
    resource = Resource.create({"service.name": f"steward-{service}", "service.namespace": "steward"})
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp" if endpoint else "none")
    exporting = (exporter_name == "otlp" and bool(endpoint)) or exporter_name == "console"
    # With nowhere to send spans, record none (ALWAYS_OFF): trace ids are still created and propagated,
    # so logs and downstream hops keep them, but no per-call span bookkeeping is paid for nothing.
    provider = TracerProvider(resource=resource, sampler=None if exporting else ALWAYS_OFF)
    if exporter_name == "otlp" and endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter_name == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    trace.set_tracer_provider(provider)
    readers = []
    if endpoint and os.environ.get("OTEL_METRICS_EXPORTER", "otlp") == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    return provider


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """W3C trace context of the current span, as NATS headers."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context a publisher put into NATS headers."""
    return propagate.extract(dict(headers or {}))


# --------------------------------------------------------------------------- server spans

_PROPAGATION_KEYS = frozenset({"traceparent", "tracestate", "baggage"})


class _Details(NamedTuple):
    """The part of ``grpc.HandlerCallDetails`` OpenTelemetry's interceptor reads (the method)."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


def _recording() -> bool:
    """True when server spans are recorded: an SDK tracer provider whose sampler is not ALWAYS_OFF."""
    provider = trace.get_tracer_provider()
    return isinstance(provider, TracerProvider) and provider.sampler is not ALWAYS_OFF


class TracingInterceptor(MethodWrappingInterceptor):
    """A server span per call, child of the caller's W3C trace context; wrapped once per method.

    When spans are recorded (an exporter is configured), each call goes through OpenTelemetry's own
    grpc interceptor: attributes, status, exceptions. When they are not (:func:`setup_telemetry` samples
    nothing without an exporter, and tests run without an SDK provider), the call only gets what logs and
    downstream hops need: the caller's context extracted from metadata (when it sent any) and a
    non-recording span of the same trace made current — without OpenTelemetry's per-call work (a new
    handler, a proxied servicer context, attribute and metadata dicts), which cost more than the span.
    """

    def __init__(self) -> None:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        self._otel: Any = aio_server_interceptor()
        self._tracer = trace.get_tracer(__name__)

    def wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` running inside a server span named ``method``."""
        details = _Details(method)
        otel, tracer = self._otel, self._tracer
        server_kind = trace.SpanKind.SERVER

        def enter(context: aio.ServicerContext) -> Token[otel_context.Context]:
            carrier: dict[str, str] | None = None
            for key, value in context.invocation_metadata() or ():
                if key in _PROPAGATION_KEYS:
                    if carrier is None:
                        carrier = {}
                    carrier[key] = value
            parent = propagate.extract(carrier) if carrier is not None else None
            span = tracer.start_span(method, context=parent, kind=server_kind)
            return otel_context.attach(trace.set_span_in_context(span, parent))

        def unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            recorded = otel._intercept_aio_server_unary(behaviour, details)

            async def call(request: Any, context: aio.ServicerContext) -> Any:
                if _recording():
                    return await recorded(request, context)
                token = enter(context)
                try:
                    return await behaviour(request, context)
                finally:
                    otel_context.detach(token)

            return call

        def streaming(behaviour: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
            recorded = otel._intercept_aio_server_stream(behaviour, details)

            async def call(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                if _recording():
                    async for item in recorded(request, context):
                        yield item
                    return
                token = enter(context)
                try:
                    async for item in behaviour(request, context):
                        yield item
                finally:
                    otel_context.detach(token)

            return call

        return wrap_rpc_behaviour(handler, unary, streaming)
