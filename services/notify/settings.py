"""Typed configuration of notify (``STEWARD_NOTIFY__...`` environment variables).

Its database, the OpenBao Transit key that wraps the keys of everything personal notify keeps until a send is
final (tenant contacts, template variables), the SMTP relay it sends email through, the key of the recipient
hashes, and the delivery engine's retry, backoff and breaker limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from services.chassis.settings import ServiceSettings, service_settings_config
from services.chassis.upstreams import UpstreamSettings
from services.notify.breach_settings import BreachSettings
from services.notify.pacing import PacingSettings
from services.notify.whatsapp import WhatsAppSettings

__all__ = [
    "DeliverySettings",
    "DkimSettings",
    "HttpSettings",
    "NotifySettings",
    "NotifyTransitSettings",
    "SmtpSettings",
]


class NotifyTransitSettings(BaseModel):
    """Where the OpenBao/Vault Transit engine is, and the name of notify's wrapping key."""

    url: str = "http://127.0.0.1:8200"
    token: SecretStr
    mount: str = "transit"
    key: str = Field(default="steward-notify", description="aes256-gcm96 Transit key created by notify at start-up.")
    connect_timeout_s: float = Field(default=2.0, gt=0)
    read_timeout_s: float = Field(default=5.0, gt=0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=5.0, gt=0)


class DkimSettings(BaseModel):
    """DKIM signing of outgoing email (``STEWARD_NOTIFY__SMTP__DKIM__*``); the public key is published as the TXT
    record ``<selector>._domainkey.<domain>``."""

    selector: str = Field(
        min_length=1, max_length=63, pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$", description="e.g. s2026"
    )
    domain: str = Field(
        default="",
        pattern=r"^$|^[A-Za-z0-9.-]+\.[A-Za-z]{2,}$",
        description="The signing domain (d=); empty: the from address's domain (aligned for DMARC).",
    )
    private_key_file: Path = Field(description="The RSA private key (PEM, 2048 bits recommended); read at start.")


class SmtpSettings(BaseModel):
    """The SMTP relay. ``tls`` is ``implicit`` (port 465, RFC 8314) or ``starttls`` (mandatory: a server that does
    not offer it is refused); certificates are always verified, against ``ca_file`` when given. Sessions are pooled
    (``pool_size``) and reused for up to ``session_max_messages`` messages."""

    host: str = "127.0.0.1"
    port: int = Field(default=465, ge=1, le=65535)
    tls: Literal["implicit", "starttls"] = "implicit"
    ca_file: Path | None = None
    username: str = ""
    password: SecretStr = SecretStr("")
    from_address: str = "notices@steward.example"
    # The right-hand side of our Message-IDs (default: the from address's domain).
    message_id_domain: str = ""
    timeout_s: float = Field(default=10.0, gt=0)
    pool_size: int = Field(default=8, ge=1, le=100, description="Open sessions to the relay at most.")
    session_max_messages: int = Field(
        default=100, ge=1, description="Messages per session before it is closed and a fresh one opened."
    )
    session_check_after_s: float = Field(
        default=5.0, ge=0, description="A session idle longer than this is checked with NOOP before it is reused."
    )
    dkim: DkimSettings | None = Field(default=None, description="Sign outgoing email with DKIM; unset: unsigned.")


class DeliverySettings(BaseModel):
    """The delivery engine: attempts, capped full-jitter backoff, the scan of due deliveries, breakers."""

    max_attempts: int = Field(default=8, ge=1)
    backoff_base_s: float = Field(default=2.0, gt=0)
    backoff_cap_s: float = Field(default=900.0, gt=0)
    # How long a claimed delivery may stay "sending" before it is presumed lost (answer never recorded).
    sending_lease_s: float = Field(default=120.0, gt=0)
    scan_interval_s: float = Field(default=1.0, gt=0)
    batch: int = Field(default=50, ge=1)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)


class HttpSettings(BaseModel):
    """notify's HTTP endpoints (WhatsApp webhook, RFC 8058 unsubscribe) in the service's own process."""

    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port (tests).")
    public_base_url: str = Field(
        default="https://steward.example/notify",
        description="How recipients and Meta reach these endpoints; unsubscribe links are <base>/unsubscribe?token=.",
    )


class NotifySettings(ServiceSettings):
    """``STEWARD_NOTIFY__*`` configuration."""

    model_config = service_settings_config("NOTIFY")

    database_url: SecretStr = SecretStr("sqlite:///.steward/data/notify.db")
    transit: NotifyTransitSettings
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    pacing: PacingSettings = Field(default_factory=PacingSettings)  # per-tenant send rate limits (pacing.py)
    breach: BreachSettings = Field(default_factory=BreachSettings)  # breach notices, impact log (breach_settings.py)
    recipient_hash_key: SecretStr = Field(
        description="HMAC key (at least 32 characters) of the recipient hashes in deliveries and the suppression "
        "list, and root of the breach ack links' key; changing it forgets every suppression and voids every ack link.",
        min_length=32,
    )
    unsubscribe_url: str = Field(
        default="",
        description="Base of the RFC 8058 one-click unsubscribe links (a signed token is appended); empty: "
        "<http.public_base_url>/unsubscribe.",
    )
    unsubscribe_key: SecretStr = Field(
        description="Root key (at least 32 characters) of the signed unsubscribe tokens; changing it voids every "
        "unsubscribe link already sent.",
        min_length=32,
    )
    http: HttpSettings = Field(default_factory=HttpSettings)
    whatsapp: WhatsAppSettings | None = Field(
        default=None, description="The WhatsApp Cloud API (or the local Graph stand-in); unset: no WhatsApp channel."
    )
    whatsapp_reengagement_template: str = Field(
        default="",
        description="The approved WhatsApp template sent when a text notice is refused outside the 24 h window "
        "(131047); it must be declared in whatsapp.templates. Empty: such notices end FAILED wa_131047.",
    )
    upstreams: dict[str, UpstreamSettings] = Field(
        default_factory=lambda: {"vault": UpstreamSettings()},
        description="The services notify calls: 'vault' (subjects' addresses at send time, over mTLS with notify's "
        "client certificate, name 'notify', which the vault must allow).",
    )
    vault_timeout_s: float = Field(default=5.0, gt=0)
    trust_identity_metadata: bool = False
    db_workers: int = Field(default=4, ge=1)
