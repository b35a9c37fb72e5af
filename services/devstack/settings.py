"""Settings of ``steward run`` and ``steward doctor``: flags, then ``STEWARD_RUN__*`` variables, then defaults.

Which fields were set explicitly matters: an explicitly chosen port that is busy is an error, a busy
*default* port is replaced by a free one (so the stack never talks to somebody else's server).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from services.chassis.settings import load_settings, service_settings_config
from services.cli.home import DEFAULT_HOME

__all__ = ["RunSettings", "load_run_settings"]


class RunSettings(BaseSettings):
    """Where the local stack keeps its state and which ports it listens on (``STEWARD_RUN__<FIELD>``)."""

    model_config = service_settings_config("RUN")

    home: Path = Field(default=DEFAULT_HOME, description="Folder holding everything the stack keeps.")
    host: str = Field(default="127.0.0.1", description="Interface every component binds to; loopback only.")
    nats_port: int = Field(default=4222, ge=1, le=65535)
    openbao_port: int = Field(default=8200, ge=1, le=65535)
    openbao_cluster_port: int = Field(default=8201, ge=1, le=65535)
    idp_port: int = Field(
        default=8400, ge=1, le=65535, description="The dev IdP's HTTP port (discovery, JWKS, device flow)."
    )
    service_ports: dict[str, int] = Field(
        default_factory=dict,
        description="gRPC port per service, e.g. STEWARD_RUN__SERVICE_PORTS__VAULT=50052; unset ones use the catalog.",
    )
    database: str | None = Field(
        default=None,
        description=(
            "PostgreSQL server URL (postgresql://user:password@host:5432); each service gets its own database "
            "there, created if missing. Unset: SQLite files in the home folder. A service's own "
            "STEWARD_<SERVICE>__DATABASE_URL wins over both."
        ),
    )
    skip_services: list[str] = Field(
        default_factory=list,
        description="Installed services not to start (to run one under a debugger), as a JSON list in the variable.",
    )
    ready_timeout_s: float = Field(default=30.0, gt=0, description="How long a child may take to start listening.")
    stop_grace_s: float = Field(default=10.0, ge=0, description="SIGTERM to SIGKILL delay when stopping a child.")
    restart_backoff_max_s: float = Field(default=30.0, gt=0, description="Cap of the crash-restart backoff.")

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        # OpenBao listens without TLS and its root token sits in a file: never expose that to a network.
        try:
            loopback = ipaddress.ip_address(value).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError("the local stack binds a loopback address only (e.g. 127.0.0.1)")
        return value

    def is_explicit(self, field: str) -> bool:
        """True when ``field`` came from a flag or an environment variable rather than its default."""
        return field in self.model_fields_set

    @property
    def resolved_home(self) -> Path:
        """The home folder as an absolute path (children run with other working directories in mind)."""
        return self.home.expanduser().resolve()


def load_run_settings(**flags: object) -> RunSettings:
    """Build :class:`RunSettings`; ``flags`` are command-line values, ``None`` meaning "not given"."""
    return load_settings(RunSettings, **{name: value for name, value in flags.items() if value is not None})
