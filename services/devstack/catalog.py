"""The Steward services ``steward run`` knows about, and the environment each one is started with.

Adding a service is one line in :data:`SERVICES`. The launcher starts a service only when
``services/<name>/main.py`` exists and defines ``main()`` (:func:`installed`); it never pretends a
service runs. Order matters: services start in table order and stop in reverse, so the gateway,
which calls the others, comes last.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.devstack.devca import DevPki
from services.devstack.devidp import OperatorTrust

__all__ = [
    "CLI_IDENTITY",
    "SERVICES",
    "RunningUpstream",
    "ServiceEntry",
    "SmtpAccess",
    "TransitAccess",
    "WhatsAppAccess",
    "installed",
    "service_environment",
]

CLI_IDENTITY = "steward-cli"
"""Client certificate the CLI itself uses (``steward doctor``'s health probes); on no allowlist."""


@dataclass(frozen=True)
class ServiceEntry:
    """One Steward service as the launcher sees it.

    ``allowed_clients`` non-empty means mTLS: callers need a dev-CA certificate with one of these
    names. Empty means server-side TLS only, for the gateway, whose callers authenticate with API
    keys or operator tokens. ``extra_databases`` maps further ``*_DATABASE_URL`` settings to SQLite
    files; ``generated_secrets`` are settings filled from ``.steward/secrets.json``; ``upstreams``
    are the services it forwards to (given their address and its client certificate when running).
    ``verifies_operator_tokens`` means it is told to trust the local dev IdP's JWKS (the gateway).
    ``uses_smtp`` means it sends email through the launcher's STARTTLS sink (notify).
    """

    name: str
    default_port: int
    allowed_clients: tuple[str, ...] = ()
    uses_transit: bool = False
    extra_databases: tuple[tuple[str, str], ...] = ()
    generated_secrets: tuple[str, ...] = ()
    upstreams: tuple[str, ...] = ()
    verifies_operator_tokens: bool = False
    uses_smtp: bool = False  # told where the launcher's SMTP sink is (notify)
    uses_whatsapp: bool = False  # told where the launcher's Graph API stand-in is, and serves its webhook (notify)

    @property
    def module(self) -> str:
        """The module run with ``python -m``."""
        return f"services.{self.name}.main"

    @property
    def env_prefix(self) -> str:
        """The service's settings prefix (see ``services.chassis.settings.service_settings_config``)."""
        return f"STEWARD_{self.name.upper()}__"

    def database_files(self) -> dict[str, str]:
        """SQLite file name under ``data/`` for every database setting of the service."""
        return {"DATABASE_URL": f"{self.name}.db", **dict(self.extra_databases)}


SERVICES: tuple[ServiceEntry, ...] = (
    ServiceEntry(
        "vault",
        50052,
        allowed_clients=("gateway", "dsr", "notify"),  # dsr resolves identifiers; notify reads addresses to send
        uses_transit=True,
        extra_databases=(("TOMBSTONE_DATABASE_URL", "vault-tombstones.db"),),
    ),
    ServiceEntry("dsr", 50053, allowed_clients=("gateway",), uses_transit=True, upstreams=("vault",)),
    ServiceEntry(
        "notify",
        50054,
        allowed_clients=("gateway",),
        uses_transit=True,
        generated_secrets=("RECIPIENT_HASH_KEY", "UNSUBSCRIBE_KEY"),
        uses_smtp=True,
        upstreams=("vault",),  # subjects' addresses at send time (GetSubjectContact, notify's certificate)
        uses_whatsapp=True,
    ),
    ServiceEntry(
        "gateway",
        50051,
        generated_secrets=("API_KEY_PEPPER", "REGISTRY_KEY"),
        upstreams=("vault", "dsr", "notify"),
        verifies_operator_tokens=True,
    ),
)


@dataclass(frozen=True)
class TransitAccess:
    """Where the vault finds Transit and the token it uses (the root token: dev only)."""

    url: str
    token: str


@dataclass(frozen=True)
class SmtpAccess:
    """Where the launcher's SMTP sink listens (STARTTLS with a dev-CA certificate)."""

    host: str
    port: int


@dataclass(frozen=True)
class WhatsAppAccess:
    """The launcher's Graph API stand-in, and the port notify serves its webhook and unsubscribe endpoints on."""

    base_url: str
    phone_number_id: str
    access_token: str
    app_secret: str
    http_port: int
    templates: Mapping[str, int]
    reengagement_template: str


@dataclass(frozen=True)
class RunningUpstream:
    """A service already started by this launcher, as an upstream of the gateway."""

    name: str
    address: str


def installed(entry: ServiceEntry) -> bool:
    """True when ``services/<name>/main.py`` exists and defines a top-level ``main`` function.

    The module is located with ``importlib.util.find_spec`` and parsed, not imported: importing it
    here would run a service's imports inside the launcher.
    """
    try:
        spec = importlib.util.find_spec(entry.module)
    except ModuleNotFoundError:
        return False
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return False
    try:
        tree = ast.parse(Path(spec.origin).read_text(), filename=spec.origin)
    except (OSError, SyntaxError, ValueError):
        # A main.py that does not parse is not a runnable service; starting it would only crash-loop.
        return False
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "main" for node in tree.body)


def service_environment(
    entry: ServiceEntry,
    *,
    host: str,
    port: int,
    data_dir: Path,
    nats_url: str,
    pki: DevPki,
    transit: TransitAccess | None = None,
    secrets: Mapping[str, str] | None = None,
    running: Mapping[str, RunningUpstream] | None = None,
    operator_trust: OperatorTrust | None = None,
    smtp: SmtpAccess | None = None,
    whatsapp: WhatsAppAccess | None = None,
) -> dict[str, str]:
    """The ``STEWARD_<NAME>__*`` variables the launcher sets for ``entry`` (on top of its own environment)."""
    prefix = entry.env_prefix
    certificate = pki[entry.name]
    env = {f"{prefix}{setting}": f"sqlite:///{data_dir / file}" for setting, file in entry.database_files().items()}
    env |= {
        f"{prefix}NATS__URL": nats_url,
        f"{prefix}GRPC__HOST": host,
        f"{prefix}GRPC__PORT": str(port),
        f"{prefix}GRPC__TLS__CERT_FILE": str(certificate.cert_file),
        f"{prefix}GRPC__TLS__KEY_FILE": str(certificate.key_file),
    }
    if entry.allowed_clients:
        env[f"{prefix}GRPC__TLS__CLIENT_CA_FILE"] = str(pki.ca_file)
        env[f"{prefix}GRPC__TLS__ALLOWED_CLIENT_NAMES"] = json.dumps(list(entry.allowed_clients))
    if entry.uses_transit:
        if transit is None:
            raise ValueError(f"{entry.name} needs Transit but none was given")
        env[f"{prefix}TRANSIT__URL"] = transit.url
        env[f"{prefix}TRANSIT__TOKEN"] = transit.token
    for name in entry.generated_secrets:
        if secrets is None or name not in secrets:
            raise ValueError(f"{entry.name} needs the generated secret {name} but none was given")
        env[f"{prefix}{name}"] = secrets[name]
    if entry.verifies_operator_tokens and operator_trust is not None:
        env |= {
            f"{prefix}JWT__JWKS_FILE": str(operator_trust.jwks_file),
            f"{prefix}JWT__ISSUER": operator_trust.issuer,
            f"{prefix}JWT__AUDIENCE": operator_trust.audience,
        }
    if entry.uses_smtp and smtp is not None:
        env |= {
            f"{prefix}SMTP__HOST": smtp.host,
            f"{prefix}SMTP__PORT": str(smtp.port),
            f"{prefix}SMTP__TLS": "starttls",
            f"{prefix}SMTP__CA_FILE": str(pki.ca_file),
            f"{prefix}SMTP__FROM_ADDRESS": "notices@steward.localhost",
        }
    if entry.uses_whatsapp and whatsapp is not None:
        env |= {
            f"{prefix}WHATSAPP__BASE_URL": whatsapp.base_url,
            f"{prefix}WHATSAPP__PHONE_NUMBER_ID": whatsapp.phone_number_id,
            f"{prefix}WHATSAPP__ACCESS_TOKEN": whatsapp.access_token,
            f"{prefix}WHATSAPP__APP_SECRET": whatsapp.app_secret,
            f"{prefix}WHATSAPP__VERIFY_TOKEN": whatsapp.app_secret,
            f"{prefix}WHATSAPP__TEMPLATES": json.dumps(dict(whatsapp.templates)),
            f"{prefix}WHATSAPP_REENGAGEMENT_TEMPLATE": whatsapp.reengagement_template,
            f"{prefix}HTTP__HOST": host,
            f"{prefix}HTTP__PORT": str(whatsapp.http_port),
            f"{prefix}HTTP__PUBLIC_BASE_URL": f"http://{host}:{whatsapp.http_port}",
        }
    for upstream in entry.upstreams:
        target = (running or {}).get(upstream)
        if target is None:
            continue  # not running: the gateway answers UNAVAILABLE for its routes
        key = f"{prefix}UPSTREAMS__{upstream.upper()}__"
        env |= {
            f"{key}ADDRESS": target.address,
            f"{key}CA_FILE": str(pki.ca_file),
            f"{key}CERT_FILE": str(certificate.cert_file),
            f"{key}KEY_FILE": str(certificate.key_file),
        }
    return env
