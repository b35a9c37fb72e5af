"""One typed settings loader for every service.

Each service declares a ``pydantic_settings.BaseSettings`` subclass with ``env_prefix`` set to
``STEWARD_<SERVICE>__``; :func:`load_settings` builds it and turns validation failures into a
:class:`SettingsError` whose message names the environment variable to fix, so a pod that is
misconfigured dies at start-up with one readable line instead of a stack trace.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "GrpcSettings",
    "MetricsSettings",
    "NatsSettings",
    "ServiceSettings",
    "SettingsError",
    "TlsSettings",
    "load_settings",
    "service_settings_config",
    "variable_name",
]

S = TypeVar("S", bound=BaseSettings)


class SettingsError(RuntimeError):
    """Start-up configuration is missing or invalid; the message names each variable to fix."""


class TlsSettings(BaseModel):
    """Server (and optionally client-verifying) TLS material, as file paths."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = Field(
        default=None, description="When set, clients must present a certificate signed by this CA (mTLS)."
    )
    allowed_client_names: list[str] = Field(
        default_factory=list, description="mTLS only: certificate common names allowed to call (empty = any)."
    )

    @property
    def enabled(self) -> bool:
        """True when a certificate and key are configured."""
        return self.cert_file is not None and self.key_file is not None


class GrpcSettings(BaseModel):
    """gRPC server knobs every service shares."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_concurrent_rpcs: int = Field(default=1000, ge=1)
    keepalive_time_ms: int = Field(default=30_000, ge=1000)
    keepalive_timeout_ms: int = Field(default=10_000, ge=1000)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    max_connection_age_ms: int = Field(
        default=300_000,
        ge=1000,
        description="Servers close each connection after this age (clients reconnect and re-resolve the address, "
        "so pods added by a scale-out get calls).",
    )
    max_connection_age_grace_ms: int = Field(
        default=3_600_000,
        ge=0,
        description="How long calls in flight on an aged connection may still run (the longest capped call, "
        "RewrapTenantKeys, gets an hour).",
    )
    health_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Plaintext port serving only grpc.health.v1 for Kubernetes gRPC probes, which cannot speak "
        "TLS; unset = no such port (health stays on the main port only).",
    )
    tls: TlsSettings = Field(default_factory=TlsSettings)


class MetricsSettings(BaseModel):
    """The Prometheus ``/metrics`` endpoint (plaintext HTTP; series hold names and counts, never customer data)."""

    port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port serving /metrics in Prometheus text format; unset = no endpoint (the default, so tests and "
        "local runs bind nothing), 0 = any free port. The Kubernetes manifests set 9464.",
    )
    host: str | None = Field(default=None, description="Address to bind; unset = the gRPC host.")


class NatsSettings(BaseModel):
    """Where the NATS JetStream server is and how the bus behaves."""

    url: str = "nats://127.0.0.1:4222"
    stream: str = "STEWARD"
    max_deliveries: int = Field(default=5, ge=1)
    ack_wait_s: float = Field(default=30.0, gt=0)
    outbox_poll_s: float = Field(default=0.2, gt=0)
    enabled: bool = True
    credentials_file: Path | None = Field(default=None, description="NATS .creds file (JWT + nkey seed).")
    nkey_seed_file: Path | None = Field(
        default=None, description="The service's own NATS nkey seed (``SU...``), for servers with nkey users."
    )
    tls_ca_file: Path | None = Field(default=None, description="CA that signed the NATS server's certificate.")
    tls_cert_file: Path | None = Field(default=None, description="Client certificate when NATS requires mTLS.")
    tls_key_file: Path | None = None
    tls_reload_check_s: float = Field(
        default=5.0,
        gt=0,
        description="How often the CA/client certificate files are checked; a change is used by the next (re)connect.",
    )
    # The streams as declared (services/chassis/streams.py; `steward nats apply` makes them so).
    stream_replicas: int = Field(default=1, ge=1, le=5, description="Replicas of the events and dead-letter streams.")
    stream_max_age_s: float = Field(
        default=0.0, ge=0, description="How long the events stream keeps messages; 0 = forever."
    )
    dlq_stream: str = "STEWARD_DLQ"
    dlq_max_age_s: float = Field(default=0.0, ge=0, description="How long dead letters are kept; 0 = forever.")
    stream_check: Literal["warn", "refuse", "off"] = Field(
        default="warn",
        description="At start, when the live streams keep less than declared: log it (warn), or also keep events in "
        "the outbox and consume nothing until they are fixed (refuse).",
    )

    def tls_context(self) -> ssl.SSLContext | None:
        """A client TLS context when a CA is configured (verifying the server, with a client cert if set)."""
        if self.tls_ca_file is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls_ca_file))
        if self.tls_cert_file is not None:
            context.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file) if self.tls_key_file else None)
        return context


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclasses set ``model_config = service_settings_config("VAULT")``."""

    database_url: SecretStr = Field(
        default=SecretStr("sqlite:///.steward/data/service.db"),
        description="SQLAlchemy URL; sqlite:///path for the embedded default, postgresql+psycopg://… in production.",
    )
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log_level: str = "INFO"
    migrate_on_start: bool = Field(
        default=True,
        description="Migrate the database(s) to head at start-up; false = refuse to start unless they are at head "
        "(migrations then run as a Job: steward db upgrade --service <name>).",
    )


def service_settings_config(service: str) -> SettingsConfigDict:
    """The one env-var convention: ``STEWARD_<SERVICE>__FIELD`` and ``__`` for nesting."""
    return SettingsConfigDict(
        env_prefix=f"STEWARD_{service.upper()}__",
        env_nested_delimiter="__",
        extra="ignore",
        case_sensitive=False,
    )


def variable_name(settings_cls: type[BaseSettings], loc: tuple[int | str, ...]) -> str:
    """The environment variable of the setting at ``loc``, e.g. ``STEWARD_VAULT__TRANSIT__TOKEN``."""
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    return prefix + "__".join(str(part) for part in loc).upper()


def load_settings(settings_cls: type[S], **overrides: object) -> S:
    """Build ``settings_cls`` from the environment (and explicit overrides, for tests and the launcher).

    Raises SettingsError naming every missing or invalid variable; the offending value is never
    echoed, since it may be a secret.
    """
    try:
        return settings_cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = variable_name(settings_cls, tuple(error["loc"]))
            problems.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid configuration — set or fix: " + "; ".join(problems)) from None
