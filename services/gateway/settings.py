"""Typed configuration of the gateway (``STEWARD_GATEWAY__...`` environment variables).

Upstream addresses and client TLS files per forwarded service, operator-token trust (JWKS, issuer,
audience), rate limits, per-route deadline caps and the secrets (API-key pepper, registry key) as
``SecretStr`` so they never print. Algorithms that would let a public key act as an HMAC secret, or
no signature at all, are refused at start-up rather than at the first token.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from services.chassis.settings import ServiceSettings, service_settings_config
from services.chassis.upstreams import UpstreamSettings

__all__ = ["GatewaySettings", "JwtSettings", "RateLimitSettings"]

# Asymmetric algorithms only: an HS* algorithm would let anyone holding the (public) JWKS mint tokens.
ALLOWED_JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class JwtSettings(BaseModel):
    """Trust in operator tokens issued by the company IdP."""

    jwks_url: str = ""
    jwks_file: Path | None = None
    issuer: str = ""
    audience: str = ""
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    leeway_s: float = Field(default=30.0, ge=0, le=60)
    jwks_refetch_interval_s: float = Field(
        default=30.0, ge=0, description="Unknown kid refetches the JWKS at most once per this interval."
    )
    jwks_max_age_s: float = Field(default=600.0, gt=0, description="Refresh the JWKS when older than this.")
    roles_claim: str = "roles"

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = [alg for alg in value if alg not in ALLOWED_JWT_ALGORITHMS]
        if bad or not value:
            raise ValueError(f"only asymmetric algorithms are accepted ({', '.join(sorted(ALLOWED_JWT_ALGORITHMS))})")
        return value

    @model_validator(mode="after")
    def _complete_or_absent(self) -> JwtSettings:
        parts = {"jwks_url or jwks_file": bool(self.jwks_url or self.jwks_file), "issuer": bool(self.issuer)}
        parts["audience"] = bool(self.audience)
        if any(parts.values()) and not all(parts.values()):
            missing = ", ".join(name for name, present in parts.items() if not present)
            raise ValueError(f"operator token trust is half-configured: also set {missing}")
        return self

    @property
    def configured(self) -> bool:
        """True when operator tokens can be verified at all."""
        return bool((self.jwks_url or self.jwks_file) and self.issuer and self.audience)


class RateLimitSettings(BaseModel):
    """Token buckets: one per tenant (API keys and support), one per operator."""

    tenant_rps: float = Field(default=500.0, gt=0)
    tenant_burst: int = Field(default=1000, ge=1)
    operator_rps: float = Field(default=50.0, gt=0)
    operator_burst: int = Field(default=100, ge=1)
    auth_failures_per_s: float = Field(default=5.0, gt=0, description="Failed authentications per client address.")
    auth_failures_burst: int = Field(default=50, ge=1)
    tenant_overrides_rps: dict[str, float] = Field(
        default_factory=dict, description="Per-tenant rate (burst scales with it)."
    )


class GatewaySettings(ServiceSettings):
    """Everything the gateway reads at start-up."""

    model_config = service_settings_config("GATEWAY")

    env: str = Field(default="live", pattern=r"^[a-z0-9]{1,12}$", description="The <env> part of new API keys.")
    api_key_pepper: SecretStr = Field(description="HMAC key for API-key secret hashes (at least 16 characters).")
    registry_key: SecretStr = Field(
        description="Encrypts representatives' contact details in the tenant registry (at least 16 characters)."
    )
    api_key_cache_ttl_s: float = Field(
        default=0.5, gt=0, le=0.9, description="A verified key is re-read after this long (revocation bound < 1 s)."
    )
    upstreams: dict[str, UpstreamSettings] = Field(default_factory=lambda: {"vault": UpstreamSettings()})
    jwt: JwtSettings = Field(default_factory=JwtSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    default_deadline_cap_s: float = Field(default=30.0, gt=0)
    deadline_caps_s: dict[str, float] = Field(
        default_factory=dict, description="Caps by full method (/pkg.Service/Method) or service (pkg.Service)."
    )
    require_client_deadline: bool = Field(
        default=False, description="Refuse calls without a deadline instead of applying the route cap."
    )
    access_log_flush_s: float = Field(default=0.25, gt=0)
    access_log_buffer: int = Field(default=100_000, ge=100)
    legal_scan_interval_s: float = Field(
        default=60.0, gt=0, description="How often withheld legal notices and order review dates are checked."
    )
    account_retention_days: int = Field(
        default=7 * 365 + 2,
        ge=1,
        description="Days after a tenant's closure before its account information is purged (policy §7: 7 years).",
    )
    account_purge_interval_s: float = Field(
        default=3600.0, gt=0, description="How often closed tenants are checked for the account-information purge."
    )

    @field_validator("api_key_pepper", "registry_key")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value
