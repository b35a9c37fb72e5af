"""What a running ``steward run`` tells other commands: ``.steward/run.json``.

Written once the stack is up (and again, with ``running: false``, when it stops cleanly). It holds
addresses and file paths only — never the root token or unseal key, which stay in ``init.json``, nor
the operator token or the demo API key, which stay in ``idp/operator.jwt`` and ``demo.json``.

``login.json`` (:class:`OperatorLogin`, mode 0600) is what ``steward login`` obtained from the operator IdP: the
access token the operator commands send, its issuer and expiry.
``steward doctor`` reads it to know where to look, since ports may differ from the defaults.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, ValidationError

from services.cli.home import write_file_atomically

__all__ = ["OperatorLogin", "ServiceState", "StackState"]


class ServiceState(BaseModel):
    """One running Steward service."""

    address: str
    port: int
    pid: int
    database_url: str
    mtls_allowed_clients: list[str] = Field(default_factory=list)


class StackState(BaseModel):
    """Addresses and files of the local stack, as printed in the summary (``--json``) and kept in run.json."""

    home: str
    running: bool = True
    pid: int = Field(description="The `steward run` launcher's process id.")
    started_at: str
    stopped_at: str | None = None
    nats_url: str
    nats_store_dir: str
    openbao_url: str
    openbao_cluster_port: int
    openbao_init_file: str = Field(description="Unseal key and root token (0600, dev-only key custody).")
    transit_mount: str
    key_custody: str = "dev-only"
    tls_dir: str
    ca_file: str
    cli_cert_file: str
    cli_key_file: str
    idp_issuer: str | None = Field(default=None, description="Issuer of the dev IdP the local gateway trusts.")
    idp_url: str | None = Field(
        default=None, description="The dev IdP's HTTP server: `steward login` reads its discovery document."
    )
    operator_token_file: str | None = Field(default=None, description="The dev ops:admin token (0600, dev-only).")
    demo_file: str | None = Field(default=None, description="Demo tenant and API key secret (0600, dev-only).")
    services: dict[str, ServiceState] = Field(default_factory=dict)
    not_installed: list[str] = Field(default_factory=list, description="Catalog services with no main.py yet.")
    skipped: list[str] = Field(default_factory=list, description="Installed services left out with --skip.")
    notes: list[str] = Field(default_factory=list, description="Why an address differs from its default, etc.")
    pids: dict[str, int] = Field(default_factory=dict, description="Child process ids by name.")

    def ports(self) -> dict[str, int]:
        """Ports in use by name, remembered so a restart can keep its addresses."""
        ports = {"nats": int(self.nats_url.rsplit(":", 1)[1]), "openbao": int(self.openbao_url.rsplit(":", 1)[1])}
        ports["openbao_cluster"] = self.openbao_cluster_port
        if self.idp_url:
            ports["idp"] = int(self.idp_url.rsplit(":", 1)[1])
        ports.update({name: service.port for name, service in self.services.items()})
        return ports

    def save(self, path: Path) -> None:
        """Write the state file atomically (owner-only: it names where the secrets are)."""
        write_file_atomically(path, (self.model_dump_json(indent=2) + "\n").encode(), mode=0o600)

    @classmethod
    def read(cls, path: Path) -> StackState | None:
        """The stored state, or None when there is none or it cannot be parsed."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            return None


class OperatorLogin(BaseModel):
    """The operator's token from ``steward login`` (OIDC device flow), kept in ``<home>/login.json`` (0600)."""

    issuer: str
    subject: str = ""
    access_token: SecretStr
    expires_at: dt.datetime
    obtained_at: dt.datetime

    def expired(self, now: dt.datetime | None = None) -> bool:
        """True once the token's lifetime is over (then the CLI falls back and ``steward login`` is needed)."""
        return (now or dt.datetime.now(dt.UTC)) >= self.expires_at

    def save(self, path: Path) -> None:
        """Write it owner-only and atomically (a bearer token)."""
        body = self.model_dump(mode="json") | {"access_token": self.access_token.get_secret_value()}
        write_file_atomically(path, (json.dumps(body, indent=2) + "\n").encode(), mode=0o600)

    @classmethod
    def read(cls, path: Path) -> OperatorLogin | None:
        """The stored login, or None when there is none or it cannot be parsed."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            return None
