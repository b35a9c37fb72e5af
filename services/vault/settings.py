"""Typed configuration of the vault (``STEWARD_VAULT__...`` environment variables).

Where Transit is and the tokens to reach it (``SecretStr``, never printed: the data path's and, apart, the key
administration's), the main database and the
tombstone ledger (two databases, restored separately, so they must differ), record size limit, DEK
cache bounds, tenant-level DEK rotation thresholds and how often audit chain heads are signed.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator

from services.chassis.settings import ServiceSettings, service_settings_config

__all__ = ["TransitAdminSettings", "TransitSettings", "VaultSettings"]


class TransitSettings(BaseModel):
    """Where the OpenBao/Vault Transit engine is."""

    url: str = "http://127.0.0.1:8200"
    token: SecretStr
    mount: str = "transit"
    key_prefix: str = "steward-tenant-"
    audit_signing_key: str = "steward-audit-signing"
    connect_timeout_s: float = Field(default=2.0, gt=0)
    read_timeout_s: float = Field(default=5.0, gt=0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=5.0, gt=0)


class TransitAdminSettings(BaseModel):
    """The key-administration identity on the same Transit server (create, rotate, retire, delete tenant keys).

    Set it in production (``STEWARD_VAULT__TRANSIT_ADMIN__TOKEN``, OpenBao policy ``steward-vault-keys``) so
    the data-path token (``transit.token``: wrap, unwrap, sign) cannot delete a key. Unset, the data-path
    token does both (dev, ``steward run``).
    """

    token: SecretStr
    url: str | None = Field(default=None, description="Defaults to transit.url (a second proxy in Kubernetes).")


class VaultSettings(ServiceSettings):
    """``STEWARD_VAULT__*`` configuration."""

    model_config = service_settings_config("VAULT")

    database_url: SecretStr = SecretStr("sqlite:///.steward/data/vault.db")
    tombstone_database_url: SecretStr = Field(
        default=SecretStr("sqlite:///.steward/data/vault-tombstones.db"),
        description="Erasure ledger; must be a different database from database_url, restored separately.",
    )
    transit: TransitSettings
    transit_admin: TransitAdminSettings | None = None
    max_record_bytes: int = Field(default=1024 * 1024, ge=1024)
    dek_cache_max_entries: int = Field(default=100_000, ge=1)
    dek_cache_max_age_s: float = Field(default=900.0, gt=0)
    epoch_max_encryptions: int = Field(default=2**24, ge=1)
    epoch_max_age_s: float = Field(default=30 * 24 * 3600.0, gt=0)
    trust_identity_metadata: bool = False
    db_workers: int = Field(default=8, ge=1)
    postgres_group_commit: bool = Field(
        default=True,
        description="On PostgreSQL, commit concurrent writes in batches on one writer connection, as on SQLite: "
        "each takes the tenant's audit lock, so one transaction each would commit one at a time.",
    )
    audit_checkpoint_every_entries: int = Field(default=1000, ge=1)
    audit_checkpoint_interval_s: float = Field(default=300.0, gt=0)
    export_bundle_sweep_s: float = Field(
        default=3600.0, gt=0, description="How often export bundles past their expiry are deleted."
    )

    @field_validator("tombstone_database_url")
    @classmethod
    def _separate_ledger(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        main = info.data.get("database_url")
        if isinstance(main, SecretStr) and main.get_secret_value() == value.get_secret_value():
            # One database would let a restore of it roll the ledger back with it.
            raise ValueError("must differ from STEWARD_VAULT__DATABASE_URL (the ledger is restored separately)")
        return value
