"""How the CLI reaches a gateway: address, TLS trust and the operator's bearer token, then typed calls.

Resolution, most specific first:

- address: ``--gateway`` (``STEWARD_GATEWAY``), else the local stack's gateway from ``<home>/run.json``;
- TLS roots: ``--ca-file`` (``STEWARD_CA_FILE``), else the dev CA when the address is the local stack's,
  else the system's roots (a production gateway);
- token: ``--token`` (``STEWARD_TOKEN``), else the token ``steward login`` saved (``<home>/login.json``, while it
  has not expired), else ``<home>/idp/operator.jwt`` (the local dev IdP's ops:admin token);
- TLS name: ``--tls-server-name`` (``STEWARD_TLS_SERVER_NAME``) checks the gateway's certificate against that
  name instead of the address's host (a port-forward to ``localhost``, an IP), so no ``/etc/hosts`` edits.

Every call sends ``authorization: Bearer <token>``; calls the gateway forwards to a tenant's vault also
send ``x-steward-target-tenant`` (operators must name the tenant; the gateway checks it exists). Failures
become :class:`GatewayCallError`: the status code, the server's machine-readable reason (``google.rpc.ErrorInfo``
in the ``grpc-status-details-bin`` trailer, when it sent one) and its message, printable on one line
(``CODE REASON: message``), with the exit code the CLI ends with (:data:`EXIT_CODES`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from steward.dsr.v1 import dsr_pb2_grpc
from steward.gateway.v1 import gateway_pb2_grpc
from steward.vault.v1 import vault_pb2_grpc

from services.chassis.errors import error_info
from services.cli.home import StewardHome
from services.cli.state import OperatorLogin, StackState

__all__ = [
    "EXIT_CODES",
    "EXIT_DENIED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_RETRYABLE",
    "EXIT_USAGE",
    "MD_TARGET_TENANT",
    "ConfigurationError",
    "GatewayCallError",
    "GatewayClient",
    "GatewayTarget",
    "call_error",
    "exit_code_for",
    "resolve_target",
]

MD_TARGET_TENANT = "x-steward-target-tenant"
DEFAULT_TIMEOUT_S = 30.0
LONG_TIMEOUT_S = 3600.0  # the gateway caps RewrapTenantKeys at an hour too


EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_RETRYABLE = 3
EXIT_DENIED = 4

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "ok"),
    (EXIT_REFUSED, "refused for good (NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION, ...): fix first"),
    (EXIT_USAGE, "usage: a bad flag or setting, no gateway address or token"),
    (EXIT_RETRYABLE, "retryable (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED): try again later"),
    (EXIT_DENIED, "credentials (UNAUTHENTICATED, PERMISSION_DENIED): sign in again or get the role"),
)
"""Exit status of every ``steward`` command and what it means (shown by ``steward --help``)."""

_RETRYABLE = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})
_DENIED = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})


def exit_code_for(code: str) -> int:
    """The exit status for a failed call with gRPC status ``code`` (its name, e.g. ``NOT_FOUND``)."""
    if code == "OK":
        return EXIT_OK
    if code in _RETRYABLE:
        return EXIT_RETRYABLE
    if code in _DENIED:
        return EXIT_DENIED
    return EXIT_REFUSED


class ConfigurationError(RuntimeError):
    """The CLI cannot tell where the gateway is or which token to use; the message says what to pass."""


class GatewayCallError(RuntimeError):
    """A gRPC call failed: status code name, the server's reason (``""`` when it sent none), its metadata and
    message; ``str`` is one line, ``CODE REASON: message``."""

    def __init__(self, code: str, message: str, *, reason: str = "", metadata: dict[str, str] | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}" if reason else f"{code}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})

    @property
    def exit_code(self) -> int:
        """What the CLI exits with after this failure (see :data:`EXIT_CODES`)."""
        return exit_code_for(self.code)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def call_error(err: grpc.RpcError, *, hint: str = "") -> GatewayCallError:
    """A failed call as a :class:`GatewayCallError`: code, reason and metadata, message on one line (+ ``hint``)."""
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    reason, metadata = (error_info(err) if isinstance(err, grpc.Call) else None) or ("", {})
    return GatewayCallError(code.name, _one_line(details or "(no message)") + hint, reason=reason, metadata=metadata)


@dataclass(frozen=True)
class GatewayTarget:
    """Where to call and as whom."""

    address: str
    token: str
    token_source: str
    ca_file: Path | None = None
    local_stack: StackState | None = None
    """The local stack's state when ``address`` is its gateway (used for hints)."""
    server_name: str | None = None
    """The name the gateway's certificate must carry, when it is not the address's host."""


def resolve_target(
    home: StewardHome,
    *,
    gateway: str | None = None,
    token: str | None = None,
    ca_file: Path | None = None,
    server_name: str | None = None,
) -> GatewayTarget:
    """Work out address, trust and token from the options and the local stack (see the module docstring)."""
    state = StackState.read(home.state_file)
    local_address = state.services["gateway"].address if state is not None and "gateway" in state.services else None
    address = gateway or local_address
    if not address:
        raise ConfigurationError(
            f"no gateway address: pass --gateway HOST:PORT (or set STEWARD_GATEWAY), or start the local stack "
            f"with `steward run` (no gateway in {home.state_file})"
        )
    is_local = local_address is not None and address == local_address
    if ca_file is None and is_local and state is not None:
        ca_file = Path(state.ca_file)
    login = OperatorLogin.read(home.login_file)
    if token:
        bearer, source = token.strip(), "--token/STEWARD_TOKEN"
    elif login is not None and not login.expired():
        bearer, source = login.access_token.get_secret_value(), str(home.login_file)
    else:
        token_file = home.idp_dir / "operator.jwt"
        try:
            bearer, source = token_file.read_text().strip(), str(token_file)
        except FileNotFoundError:
            raise ConfigurationError(
                "no operator token: run `steward login`, or pass --token (or set STEWARD_TOKEN); the local stack "
                f"writes one to {token_file}"
            ) from None
        except OSError as exc:
            raise ConfigurationError(f"cannot read {token_file} ({exc.strerror})") from None
    if not bearer:
        raise ConfigurationError(f"the operator token from {source} is empty")
    return GatewayTarget(
        address=address,
        token=bearer,
        token_source=source,
        ca_file=ca_file,
        local_stack=state if is_local else None,
        server_name=server_name or None,
    )


def _hint(target: GatewayTarget, code: grpc.StatusCode, *, refused: bool) -> str:
    """A short "what now" for the failures a local user meets most; ``refused``: a service answered with a reason
    (not a connection failure, so no hint about reaching it)."""
    if code == grpc.StatusCode.UNAVAILABLE and refused:
        return ""
    if code == grpc.StatusCode.UNAVAILABLE and target.local_stack is not None:
        return " (is the local stack running? `steward doctor` checks it)"
    if code == grpc.StatusCode.UNAUTHENTICATED and target.token_source.endswith("operator.jwt"):
        return " (local stack: `steward token mint --save` issues a fresh dev token)"
    if code == grpc.StatusCode.UNAUTHENTICATED and target.token_source.endswith("login.json"):
        return " (sign in again: `steward login`)"
    if code == grpc.StatusCode.UNAVAILABLE and target.server_name is None:
        return " (a certificate name mismatch looks like this too: --tls-server-name NAME)"
    return ""


class GatewayClient:
    """Blocking stubs for the gateway's admin API and the vault APIs it forwards, with auth metadata added."""

    def __init__(self, target: GatewayTarget, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.target = target
        self.timeout_s = timeout_s
        try:
            roots = target.ca_file.read_bytes() if target.ca_file is not None else None
        except OSError as exc:
            raise ConfigurationError(f"cannot read the CA file {target.ca_file} ({exc.strerror})") from None
        options = [("grpc.ssl_target_name_override", target.server_name)] if target.server_name else []
        self.channel = grpc.secure_channel(
            target.address, grpc.ssl_channel_credentials(root_certificates=roots), options=options
        )
        self.admin = gateway_pb2_grpc.GatewayAdminServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.vault = vault_pb2_grpc.VaultServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.vault_admin = vault_pb2_grpc.VaultAdminServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.dsr = dsr_pb2_grpc.DsrServiceStub(self.channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def metadata(self, tenant_id: str | None = None, *, token: str | None = None) -> list[tuple[str, str]]:
        """The call metadata: the bearer token, plus the target tenant for forwarded calls."""
        metadata = [("authorization", f"Bearer {token or self.target.token}")]
        if tenant_id:
            metadata.append((MD_TARGET_TENANT, tenant_id))
        return metadata

    def _error(self, exc: grpc.RpcError) -> GatewayCallError:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        refused = isinstance(exc, grpc.Call) and error_info(exc) is not None
        return call_error(exc, hint=_hint(self.target, code, refused=refused))

    def call(
        self,
        method: Callable[..., Any],
        request: Any,
        *,
        tenant_id: str | None = None,
        token: str | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """One unary call; raises :class:`GatewayCallError`."""
        try:
            return method(request, metadata=self.metadata(tenant_id, token=token), timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def stream(
        self, method: Callable[..., Any], request: Any, *, tenant_id: str | None = None, timeout_s: float | None = None
    ) -> Iterator[Any]:
        """A server-streaming call's messages; raises :class:`GatewayCallError` (also mid-stream)."""
        try:
            yield from method(request, metadata=self.metadata(tenant_id), timeout=timeout_s or LONG_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
