"""Settings of breach notices, the access log behind ``BreachImpact`` and policy-change campaigns
(``STEWARD_NOTIFY__BREACH__...``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["BreachSettings"]


class BreachSettings(BaseModel):
    """Re-notification of unacknowledged tenants, the ack link, and how long the access log is kept."""

    # How long after a tenant's last notice, unacknowledged, it is notified again (on the injected clock).
    renotify_after_s: float = Field(default=4 * 3600.0, gt=0)
    # How many times an unacknowledged tenant is notified in all (the first notice included).
    max_notices: int = Field(default=6, ge=1, le=50)
    scan_interval_s: float = Field(default=30.0, gt=0)
    ack_url: str = Field(
        default="https://steward.example/notify/breach-ack",
        description="Base of the ack links in breach notices: notify's HTTP endpoint <http.public_base_url>/breach-ack "
        "(a signed, expiring token naming breach and tenant is appended as ?token=).",
    )
    # How long a notice's ack link works; each re-notice carries a fresh one.
    ack_token_ttl_days: int = Field(default=30, ge=1, le=365)
    # The PII-free access log (gateway access events) behind BreachImpact: kept 24 to 36 months.
    access_log_retention_months: int = Field(default=36, ge=24, le=36)
    purge_interval_s: float = Field(default=3600.0, gt=0)
    # Policy changes take effect at least this long after they are announced (the policy's 30 days).
    policy_notice_days: int = Field(default=30, ge=30)
    policy_url: str = "https://steward.example/privacy"
