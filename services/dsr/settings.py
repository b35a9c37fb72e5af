"""Typed configuration of dsr (``STEWARD_DSR__...`` environment variables).

Its database, the vault it resolves identifiers with (mTLS, dsr's own client certificate; the vault must list
``dsr`` in ``grpc.tls.allowed_client_names``), the OpenBao Transit key that signs evidence, and how often
overdue requests are looked for, and how often the retention sweep runs (on one replica: the lease holder).
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from services.chassis.settings import ServiceSettings, service_settings_config
from services.chassis.upstreams import UpstreamSettings

__all__ = ["DsrSettings", "EvidenceSigningSettings"]


class EvidenceSigningSettings(BaseModel):
    """Where the OpenBao/Vault Transit engine that signs evidence is, and the key's name."""

    url: str = "http://127.0.0.1:8200"
    token: SecretStr
    mount: str = "transit"
    signing_key: str = Field(
        default="steward-dsr-evidence", description="Ed25519 Transit key created by dsr at start-up."
    )
    connect_timeout_s: float = Field(default=2.0, gt=0)
    read_timeout_s: float = Field(default=5.0, gt=0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=5.0, gt=0)


class DsrSettings(ServiceSettings):
    """``STEWARD_DSR__*`` configuration."""

    model_config = service_settings_config("DSR")

    database_url: SecretStr = SecretStr("sqlite:///.steward/data/dsr.db")
    upstreams: dict[str, UpstreamSettings] = Field(
        default_factory=lambda: {"vault": UpstreamSettings()},
        description="The services dsr calls: 'vault' (its address and mTLS material: dsr's client certificate, "
        "name 'dsr', which the vault must allow).",
    )
    vault_timeout_s: float = Field(default=5.0, gt=0)
    transit: EvidenceSigningSettings
    trust_identity_metadata: bool = False
    overdue_scan_s: float = Field(default=60.0, gt=0)
    retention_sweep_s: float = Field(default=300.0, gt=0, description="How often the lease holder sweeps.")
    retention_lease_s: float = Field(
        default=900.0, gt=0, description="How long the sweep lease lasts unrenewed (a dead leader hands over after it)."
    )
    db_workers: int = Field(default=4, ge=1)
