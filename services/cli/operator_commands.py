"""Operator commands: ``tenant``, ``apikey``, ``keys``, ``audit``, ``support``, ``whoami``, ``demo`` and ``token``.

Each one is a call (or a few) to the gateway as an operator — the same API, policy and audit trail as
any other caller; the CLI has no side door. Common options (:func:`operator_command`): ``--gateway``,
``--token``, ``--ca-file``, ``--home``, ``--timeout``, ``--json`` (see :mod:`services.cli.client` for
how the defaults come from the local stack). Output is text, or one JSON object with ``--json``.

Failures print one line on stderr, ``error: <gRPC code>: <message>`` (with ``--json`` also
``{"error": {"code", "message"}}`` on stdout) and exit 1; a CLI that cannot even tell where to call
(no gateway address, no token) exits 2. ``audit verify`` exits 1 when the chain is broken.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click
from steward.gateway.v1 import gateway_pb2
from steward.vault.v1 import vault_pb2

from services.cli.client import ConfigurationError, GatewayCallError, GatewayClient, resolve_target
from services.cli.home import StewardHome
from services.cli.render import as_json, duration_text, enum_label, fields_text, table, timestamp_text
from services.cli.settings import DEFAULT_HOME
from services.gateway.policy import OPERATOR_ROLES, SCOPES

__all__ = ["DURATION", "apikey", "audit", "demo", "keys", "support", "tenant", "token", "whoami"]

# The gateway's policy table is the one list of scopes; click checks --scope against it before any call.
KEY_SCOPES = tuple(sorted(SCOPES))


class DurationType(click.ParamType):
    """``90`` (seconds), ``30m``, ``8h``, ``7d`` or combinations like ``1h30m`` -> seconds."""

    name = "duration"
    _PART = re.compile(r"(\d+)([smhd])")
    _UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """Seconds, or a usage error naming the accepted forms."""
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text.isdigit():
            return int(text)
        parts = self._PART.findall(text)
        if not parts or "".join(f"{n}{u}" for n, u in parts) != text:
            self.fail(f"{value!r} is not a duration: use seconds or e.g. 30m, 8h, 7d, 1h30m", param, ctx)
        return sum(int(number) * self._UNIT[unit] for number, unit in parts)


DURATION = DurationType()


@dataclass
class Invocation:
    """One run of an operator command: where to call, how to print, and the client (opened on first use)."""

    home: StewardHome
    json_output: bool
    gateway: str | None = None
    token: str | None = None
    ca_file: Path | None = None
    timeout_s: float = 30.0
    _client: GatewayClient | None = field(default=None, repr=False)

    @property
    def client(self) -> GatewayClient:
        """The gateway client, resolved from the options and the local stack."""
        if self._client is None:
            target = resolve_target(self.home, gateway=self.gateway, token=self.token, ca_file=self.ca_file)
            self._client = GatewayClient(target, timeout_s=self.timeout_s)
        return self._client

    def close(self) -> None:
        """Close the channel, if one was opened."""
        if self._client is not None:
            self._client.close()

    def emit(self, payload: dict[str, Any], text: str) -> None:
        """Print ``payload`` as one JSON object with ``--json``, else ``text``."""
        click.echo(json.dumps(payload) if self.json_output else text)

    def fail(self, code: str, message: str, exit_code: int = 1) -> NoReturn:
        """One-line error on stderr (and as JSON on stdout with ``--json``), then exit."""
        click.echo(f"error: {code}: {message}" if code else f"error: {message}", err=True)
        if self.json_output:
            click.echo(json.dumps({"error": {"code": code or "CONFIGURATION", "message": message}}))
        sys.exit(exit_code)


def operator_command(
    group: click.Group | None, name: str, **settings: Any
) -> Callable[[Callable[..., None]], click.Command]:
    """Register ``fn(invocation, **options)`` as ``group name`` (a free command when ``group`` is None) with
    the common gateway options.

    The wrapper turns :class:`GatewayCallError` and :class:`ConfigurationError` into the one-line error
    and the exit code; everything else a command does is just calls and printing.
    """

    def decorate(fn: Callable[..., None]) -> click.Command:
        @functools.wraps(fn)  # keeps fn's own click options (stored on the function) and its docstring
        def command(
            home: Path,
            gateway: str | None,
            token: str | None,
            ca_file: Path | None,
            timeout: float,
            json_output: bool,
            **options: Any,
        ) -> None:
            invocation = Invocation(
                home=StewardHome(home.expanduser().resolve()),
                json_output=json_output,
                gateway=gateway,
                token=token,
                ca_file=ca_file,
                timeout_s=timeout,
            )
            try:
                fn(invocation, **options)
            except GatewayCallError as exc:
                invocation.fail(exc.code, exc.message)
            except ConfigurationError as exc:
                invocation.fail("", str(exc), exit_code=2)
            finally:
                invocation.close()

        # click shows options in reverse order of this list: the command's own first, then the common ones.
        own = list(getattr(fn, "__click_params__", []))
        command.__click_params__ = []  # type: ignore[attr-defined]
        for option in reversed(_COMMON_OPTIONS):
            command = option(command)
        command.__click_params__ = command.__click_params__ + own  # type: ignore[attr-defined]
        return (group.command if group is not None else click.command)(name, **settings)(command)

    return decorate


_COMMON_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--gateway", envvar="STEWARD_GATEWAY", metavar="HOST:PORT", help="Gateway address [the local stack's]."
    ),
    click.option(
        "--token",
        envvar="STEWARD_TOKEN",
        metavar="JWT",
        help="Operator token (JWT from the IdP; a tenant API key for `support approve`) [<home>/idp/operator.jwt].",
    ),
    click.option(
        "--ca-file",
        envvar="STEWARD_CA_FILE",
        type=click.Path(path_type=Path, dir_okay=False),
        help="CA to verify the gateway with [the dev CA for the local stack, else the system's roots].",
    ),
    click.option(
        "--home",
        type=click.Path(path_type=Path, file_okay=False),
        default=DEFAULT_HOME,
        envvar="STEWARD_RUN__HOME",
        show_default=True,
        help="Local stack folder (gateway address, dev CA, operator token).",
    ),
    click.option(
        "--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True, help="Per-call seconds."
    ),
    click.option("--json", "json_output", is_flag=True, help="Print one JSON object instead of text."),
]


# ---------------------------------------------------------------------------------------------- tenant


def _tenant_text(tenant: Any) -> str:
    details = tenant.details
    reps = [f"{r.name} <{r.email}>" + (f" ({r.role})" if r.role else "") for r in details.representatives]
    prefs = details.communication_preferences
    return fields_text(
        [
            ("tenant", tenant.tenant_id),
            ("company", details.company_name),
            ("state", enum_label(tenant, "state")),
            ("version", tenant.version),
            ("representatives", "; ".join(reps) or "-"),
            ("industry", details.industry or "-"),
            ("size", enum_label(details, "size")),
            ("notices", f"{enum_label(prefs, 'preferred_channel')}, language {prefs.language or '-'}"),
            ("created", timestamp_text(tenant, "created_at")),
            ("closed", timestamp_text(tenant, "closed_at")),
        ]
    )


@click.group()
def tenant() -> None:
    """Business clients (tenants) in the gateway's registry."""


@operator_command(tenant, "create")
@click.option("--company", required=True, help="Company name.")
@click.option("--rep-name", required=True, help="Authorised representative's name.")
@click.option("--rep-email", required=True, help="Authorised representative's email.")
@click.option("--rep-whatsapp", default="", help="Representative's WhatsApp number (E.164).")
@click.option("--rep-role", default="owner", show_default=True, help="Representative's role label.")
@click.option("--industry", default="", help="Industry label.")
@click.option("--size", type=click.Choice(["micro", "small", "medium", "large"]), help="Head-count band.")
@click.option("--channel", type=click.Choice(["email", "whatsapp"]), default="email", show_default=True)
@click.option("--language", default="en", show_default=True, help="BCP 47 language of notices.")
@click.option("--product-updates", is_flag=True, help="The client opted in to product news.")
def tenant_create(
    run: Invocation,
    company: str,
    rep_name: str,
    rep_email: str,
    rep_whatsapp: str,
    rep_role: str,
    industry: str,
    size: str | None,
    channel: str,
    language: str,
    product_updates: bool,
) -> None:
    """Register a business client and create its vault (ops:admin)."""
    details = gateway_pb2.TenantDetails(
        company_name=company,
        representatives=[
            gateway_pb2.Representative(name=rep_name, email=rep_email, whatsapp_number=rep_whatsapp, role=rep_role)
        ],
        communication_preferences=gateway_pb2.CommunicationPreferences(
            preferred_channel=gateway_pb2.NoticeChannel.Value(f"NOTICE_CHANNEL_{channel.upper()}"),
            language=language,
            product_updates=product_updates,
        ),
        industry=industry,
        size=gateway_pb2.CompanySize.Value(f"COMPANY_SIZE_{(size or 'unspecified').upper()}"),
    )
    client = run.client
    created = client.call(client.admin.CreateTenant, gateway_pb2.CreateTenantRequest(details=details)).tenant
    run.emit({"tenant": as_json(created)}, _tenant_text(created))


@operator_command(tenant, "get")
@click.argument("tenant_id")
def tenant_get(run: Invocation, tenant_id: str) -> None:
    """Show a tenant's registry entry."""
    client = run.client
    found = client.call(client.admin.GetTenant, gateway_pb2.GetTenantRequest(tenant_id=tenant_id)).tenant
    run.emit({"tenant": as_json(found)}, _tenant_text(found))


@operator_command(tenant, "close")
@click.argument("tenant_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def tenant_close(run: Invocation, tenant_id: str, yes: bool) -> None:
    """Close a tenant: its vault refuses writes and the retention clocks start (ops:admin). Idempotent."""
    if not yes:
        click.confirm(f"Close {tenant_id}? Its vault stops accepting writes.", abort=True, err=True)
    client = run.client
    closed = client.call(client.admin.CloseTenant, gateway_pb2.CloseTenantRequest(tenant_id=tenant_id)).tenant
    run.emit({"tenant": as_json(closed)}, _tenant_text(closed))


# ---------------------------------------------------------------------------------------------- apikey


def _key_rows(api_keys: Any) -> list[list[object]]:
    return [
        [
            key.key_id,
            key.name,
            enum_label(key, "state"),
            " ".join(key.scopes),
            timestamp_text(key, "created_at"),
            timestamp_text(key, "expires_at"),
        ]
        for key in api_keys
    ]


_KEY_HEADERS = ("key id", "name", "state", "scopes", "created", "expires")


def _new_key_text(key: Any, token_value: str) -> str:
    return "\n".join(
        [
            table(_KEY_HEADERS, _key_rows([key])),
            f"tenant  {key.tenant_id}",
            f"token   {token_value}",
            "The token is shown once: store it in the app's secret store now.",
        ]
    )


@click.group()
def apikey() -> None:
    """API keys of a tenant's apps (only hashes are stored; a secret is shown once)."""


@operator_command(apikey, "create")
@click.option("--tenant", "tenant_id", required=True, help="Tenant the key belongs to.")
@click.option("--name", required=True, help="Label, e.g. the app's name.")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(KEY_SCOPES), help="Repeatable.")
@click.option("--ttl", type=DURATION, default=0, help="Lifetime (e.g. 90d) [no expiry].")
def apikey_create(run: Invocation, tenant_id: str, name: str, scopes: tuple[str, ...], ttl: int) -> None:
    """Issue an API key for a tenant (ops:admin)."""
    client = run.client
    request = gateway_pb2.CreateApiKeyRequest(tenant_id=tenant_id, name=name, scopes=list(scopes), ttl_seconds=ttl)
    response = client.call(client.admin.CreateApiKey, request)
    run.emit(
        {"api_key": as_json(response.api_key), "token": response.token},
        _new_key_text(response.api_key, response.token),
    )


@operator_command(apikey, "list")
@click.option("--tenant", "tenant_id", required=True, help="Tenant whose keys to list.")
@click.option("--all", "include_inactive", is_flag=True, help="Include revoked and expired keys.")
def apikey_list(run: Invocation, tenant_id: str, include_inactive: bool) -> None:
    """List a tenant's API keys (ops:admin, ops:oncall)."""
    client = run.client
    request = gateway_pb2.ListApiKeysRequest(tenant_id=tenant_id, include_inactive=include_inactive)
    found = client.call(client.admin.ListApiKeys, request).api_keys
    run.emit({"api_keys": [as_json(key) for key in found]}, table(_KEY_HEADERS, _key_rows(found)))


@operator_command(apikey, "revoke")
@click.argument("key_id")
def apikey_revoke(run: Invocation, key_id: str) -> None:
    """Revoke a key at once, on every gateway replica (ops:admin, ops:oncall). Idempotent."""
    client = run.client
    revoked = client.call(client.admin.RevokeApiKey, gateway_pb2.RevokeApiKeyRequest(key_id=key_id)).api_key
    run.emit({"api_key": as_json(revoked)}, table(_KEY_HEADERS, _key_rows([revoked])))


@operator_command(apikey, "rotate")
@click.argument("key_id")
@click.option(
    "--grace", type=DURATION, default=0, help="How long the old key keeps working (max 7d) [0: it stops at once]."
)
def apikey_rotate(run: Invocation, key_id: str, grace: int) -> None:
    """Issue a replacement key with the same scopes; the old one stops after --grace (ops:admin)."""
    client = run.client
    response = client.call(
        client.admin.RotateApiKey, gateway_pb2.RotateApiKeyRequest(key_id=key_id, grace_seconds=grace)
    )
    old = response.previous
    stops = timestamp_text(old, "expires_at") if grace else "now"
    run.emit(
        {"api_key": as_json(response.api_key), "token": response.token, "previous": as_json(old)},
        _new_key_text(response.api_key, response.token) + f"\nThe old key {old.key_id} stops working: {stops}.",
    )


# ------------------------------------------------------------------------------------------------ keys


@click.group()
def keys() -> None:
    """A tenant's key-encryption key (KEK) in Transit: status, rotation, rewrapping stored DEKs."""


@operator_command(keys, "status")
@click.option("--tenant", "tenant_id", required=True)
def keys_status(run: Invocation, tenant_id: str) -> None:
    """KEK version in use and the oldest version that can still decrypt (ops:admin, ops:oncall)."""
    client = run.client
    found = client.call(client.vault_admin.GetTenant, vault_pb2.GetTenantRequest(), tenant_id=tenant_id).tenant
    run.emit(
        {"tenant": as_json(found)},
        fields_text(
            [
                ("tenant", found.tenant_id),
                ("vault state", enum_label(found, "state")),
                ("key version", found.key_version),
                ("min decryption version", found.min_decryption_version),
            ]
        ),
    )


@operator_command(keys, "rotate")
@click.option("--tenant", "tenant_id", required=True)
def keys_rotate(run: Invocation, tenant_id: str) -> None:
    """Add a KEK version; new DEKs use it at once. Then run `steward keys rewrap` (ops:admin, ops:oncall)."""
    client = run.client
    version = client.call(
        client.vault_admin.RotateTenantKey, vault_pb2.RotateTenantKeyRequest(), tenant_id=tenant_id
    ).key_version
    run.emit(
        {"tenant_id": tenant_id, "key_version": version},
        f"{tenant_id}: KEK rotated to version {version}; next: steward keys rewrap --tenant {tenant_id}",
    )


@operator_command(keys, "rewrap")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--batch-size", type=click.IntRange(0, 1000), default=0, help="DEKs per Transit call [200].")
def keys_rewrap(run: Invocation, tenant_id: str, batch_size: int) -> None:
    """Rewrap every stored DEK to the newest KEK version, then retire older versions (ops:admin, ops:oncall).

    Data is not re-encrypted; progress streams from the vault. Safe to re-run after an interruption.
    """
    client = run.client
    last: Any = None
    shown = 0
    with contextlib.ExitStack() as stack:
        bar: Any = None
        for step in client.stream(
            client.vault_admin.RewrapTenantKeys,
            vault_pb2.RewrapTenantKeysRequest(batch_size=batch_size),
            tenant_id=tenant_id,
        ):
            if bar is None and not run.json_output:
                bar = stack.enter_context(
                    click.progressbar(length=max(step.total, 1), label="rewrapping DEKs", file=sys.stderr)
                )
            if bar is not None:
                bar.update(max(step.rewrapped - shown, 0) if step.total else 1)
            shown = step.rewrapped
            last = step
    if last is None or not last.done:
        raise GatewayCallError("ABORTED", "the rewrap stream ended before the vault reported completion; re-run it")
    run.emit(
        {
            "tenant_id": tenant_id,
            "rewrapped": last.rewrapped,
            "total": last.total,
            "min_decryption_version": last.min_decryption_version,
        },
        f"{tenant_id}: rewrapped {last.rewrapped} of {last.total} DEKs; "
        f"KEK versions below {last.min_decryption_version} can no longer decrypt",
    )


# ----------------------------------------------------------------------------------------------- audit


@click.group()
def audit() -> None:
    """A tenant's tamper-evident access audit in the vault (reading it is audited too)."""


@operator_command(audit, "list")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--grant", "grant_id", default="", help="Only entries made under this support grant.")
@click.option("--page-size", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--page-token", default="", help="next_page_token of a previous page.")
@click.option("--all", "all_pages", is_flag=True, help="Follow every page.")
def audit_list(
    run: Invocation, tenant_id: str, grant_id: str, page_size: int, page_token: str, all_pages: bool
) -> None:
    """List audit entries, oldest first (ops:admin, ops:oncall)."""
    client = run.client
    events: list[Any] = []
    while True:
        request = vault_pb2.ListAuditEventsRequest(
            page_size=page_size, page_token=page_token, support_grant_id=grant_id
        )
        page = client.call(client.vault_admin.ListAuditEvents, request, tenant_id=tenant_id)
        events.extend(page.events)
        page_token = page.next_page_token
        if not all_pages or not page_token:
            break
    rows = [
        [e.seq, timestamp_text(e, "at"), e.principal, e.action, e.result, e.support_grant_id or "-"] for e in events
    ]
    text = table(("seq", "at", "principal", "action", "result", "grant"), rows)
    if page_token:
        text += f"\nmore: --page-token {page_token}"
    run.emit({"events": [as_json(e) for e in events], "next_page_token": page_token}, text)


@operator_command(audit, "verify")
@click.option("--tenant", "tenant_id", required=True)
def audit_verify(run: Invocation, tenant_id: str) -> None:
    """Recompute the tenant's hash chain; exit 1 when any entry does not verify (ops:admin, ops:oncall)."""
    client = run.client
    report = client.call(client.vault_admin.VerifyAuditChain, vault_pb2.VerifyAuditChainRequest(), tenant_id=tenant_id)
    payload = {
        "tenant_id": tenant_id,
        "intact": report.intact,
        "entries_checked": report.entries_checked,
        "first_broken_seq": report.first_broken_seq,
    }
    if report.intact:
        run.emit(payload, f"{tenant_id}: audit chain intact ({report.entries_checked} entries checked)")
        return
    run.emit(
        payload,
        f"{tenant_id}: audit chain BROKEN at entry {report.first_broken_seq} "
        f"({report.entries_checked} checked): treat as a security incident",
    )
    sys.exit(1)


# --------------------------------------------------------------------------------------------- support


def _grant_rows(grants: Any) -> list[list[object]]:
    return [
        [
            g.grant_id,
            g.tenant_id,
            g.principal,
            enum_label(g, "state") + (" (emergency)" if g.emergency else ""),
            g.ticket_id,
            duration_text(g.duration_seconds),
            timestamp_text(g, "expires_at"),
        ]
        for g in grants
    ]


_GRANT_HEADERS = ("grant id", "tenant", "principal", "state", "ticket", "duration", "expires")


@click.group()
def support() -> None:
    """Time-boxed support access to a tenant's records (every use is recorded and visible to the tenant)."""


@operator_command(support, "grant")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--principal", required=True, help="The support engineer's operator subject (their token's sub).")
@click.option("--reason", required=True, help="Technical need, 10-500 characters, no customer data.")
@click.option("--ticket", "ticket_id", required=True, help="Incident or ticket id.")
@click.option("--duration", type=DURATION, default="1h", show_default=True, help="At most 8h.")
def support_grant(run: Invocation, tenant_id: str, principal: str, reason: str, ticket_id: str, duration: int) -> None:
    """Emergency grant without the tenant's approval; the tenant is notified at once (ops:admin)."""
    client = run.client
    request = gateway_pb2.GrantEmergencySupportAccessRequest(
        tenant_id=tenant_id, principal=principal, reason=reason, ticket_id=ticket_id, duration_seconds=duration
    )
    grant = client.call(client.admin.GrantEmergencySupportAccess, request).grant
    text = table(_GRANT_HEADERS, _grant_rows([grant]))
    text += f"\nThe engineer passes x-steward-support-grant: {grant.grant_id} on reads; the tenant has been notified."
    run.emit({"grant": as_json(grant)}, text)


@operator_command(support, "request")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--reason", required=True, help="Technical need, 10-500 characters, no customer data.")
@click.option("--ticket", "ticket_id", required=True, help="Incident or ticket id.")
@click.option("--duration", type=DURATION, default="1h", show_default=True, help="At most 8h, from approval.")
def support_request(run: Invocation, tenant_id: str, reason: str, ticket_id: str, duration: int) -> None:
    """Ask for read access to a tenant (support role); it stays pending until the tenant approves."""
    request = gateway_pb2.RequestSupportAccessRequest(
        tenant_id=tenant_id, reason=reason, ticket_id=ticket_id, duration_seconds=duration
    )
    client = run.client
    grant = client.call(client.admin.RequestSupportAccess, request).grant
    text = table(_GRANT_HEADERS, _grant_rows([grant]))
    text += f"\nPending: the tenant approves it with `steward support approve {grant.grant_id} --token <its key>`."
    run.emit({"grant": as_json(grant)}, text)


@operator_command(support, "approve")
@click.argument("grant_id")
def support_approve(run: Invocation, grant_id: str) -> None:
    """Approve a pending request; needs the tenant's API key with support:approve as --token."""
    client = run.client
    grant = client.call(client.admin.ApproveSupportAccess, gateway_pb2.ApproveSupportAccessRequest(grant_id=grant_id))
    run.emit({"grant": as_json(grant.grant)}, table(_GRANT_HEADERS, _grant_rows([grant.grant])))


@operator_command(support, "list")
@click.option("--tenant", "tenant_id", default="", help="Only this tenant's grants [every tenant].")
@click.option("--all", "include_inactive", is_flag=True, help="Include expired and revoked grants.")
def support_list(run: Invocation, tenant_id: str, include_inactive: bool) -> None:
    """List support grants (ops:admin, ops:oncall; support engineers see their own)."""
    client = run.client
    request = gateway_pb2.ListSupportGrantsRequest(tenant_id=tenant_id, include_inactive=include_inactive)
    found = client.call(client.admin.ListSupportGrants, request).grants
    run.emit({"grants": [as_json(g) for g in found]}, table(_GRANT_HEADERS, _grant_rows(found)))


@operator_command(support, "revoke")
@click.argument("grant_id")
def support_revoke(run: Invocation, grant_id: str) -> None:
    """End a grant now (ops:admin, ops:oncall). Idempotent."""
    client = run.client
    grant = client.call(client.admin.RevokeSupportAccess, gateway_pb2.RevokeSupportAccessRequest(grant_id=grant_id))
    run.emit({"grant": as_json(grant.grant)}, table(_GRANT_HEADERS, _grant_rows([grant.grant])))


@operator_command(support, "accesses")
@click.argument("grant_id")
@click.option("--page-size", type=click.IntRange(1, 500), default=100, show_default=True)
@click.option("--page-token", default="")
def support_accesses(run: Invocation, grant_id: str, page_size: int, page_token: str) -> None:
    """Every call made under a grant: method, outcome, time (ops:admin, ops:oncall)."""
    client = run.client
    request = gateway_pb2.ListSupportAccessesRequest(grant_id=grant_id, page_size=page_size, page_token=page_token)
    page = client.call(client.admin.ListSupportAccesses, request)
    rows = [[a.seq, timestamp_text(a, "at"), a.principal, a.method, a.status, a.latency_ms] for a in page.accesses]
    text = table(("seq", "at", "principal", "method", "status", "ms"), rows)
    if page.next_page_token:
        text += f"\nmore: --page-token {page.next_page_token}"
    run.emit({"accesses": [as_json(a) for a in page.accesses], "next_page_token": page.next_page_token}, text)


# -------------------------------------------------------------------------------------------- identity


@operator_command(None, "whoami")
def whoami(run: Invocation) -> None:
    """Who the gateway takes you for: principal, roles or scopes, tenant, token expiry."""
    client = run.client
    me = client.call(client.admin.WhoAmI, gateway_pb2.WhoAmIRequest())
    run.emit(
        {"whoami": as_json(me)},
        fields_text(
            [
                ("principal", me.principal),
                ("kind", me.principal_kind),
                ("roles", " ".join(me.roles) or "-"),
                ("scopes", " ".join(me.scopes) or "-"),
                ("tenant", me.tenant_id or "-"),
                ("credential", me.credential_id),
                ("expires", timestamp_text(me, "credential_expires_at")),
            ]
        ),
    )


@operator_command(None, "demo")
def demo(run: Invocation) -> None:
    """The local stack's demo tenant and API key: checked (and re-created if needed) through the gateway.

    `steward run` does this on every start; run it yourself after removing data, revoking the demo key,
    or when the start-up summary reported a problem.
    """
    from services.cli.demo import ensure_demo

    credentials, actions = ensure_demo(run.client, run.home.demo_file)
    for line in actions:
        click.echo(line, err=True)
    run.emit(
        {"demo": {**asdict(credentials), "file": str(run.home.demo_file)}},
        f"tenant   {credentials.tenant_id} ({credentials.company_name})\n"
        f"API key  {credentials.api_key}\n"
        f"scopes   {' '.join(credentials.scopes)}\n"
        f"(kept in {run.home.demo_file}, 0600)",
    )


@click.group()
def token() -> None:
    """Operator tokens from the local stack's dev IdP. DEV ONLY: production tokens come from the company IdP."""


@token.command("mint")
@click.option(
    "--home",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_HOME,
    envvar="STEWARD_RUN__HOME",
    show_default=True,
)
@click.option("--subject", default="local-admin", show_default=True, help="The token's sub (operator id).")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(sorted(OPERATOR_ROLES)),
    help="Repeatable [ops:admin].",
)
@click.option("--ttl", type=DURATION, default="12h", show_default=True, help="Lifetime, at most 12h.")
@click.option("--save", is_flag=True, help="Also make it the CLI's default token (<home>/idp/operator.jwt).")
@click.option("--json", "json_output", is_flag=True)
def token_mint(home: Path, subject: str, roles: tuple[str, ...], ttl: int, save: bool, json_output: bool) -> None:
    """Mint an operator token (MFA claimed) signed by the dev IdP, and print it.

    `export STEWARD_TOKEN=$(steward token mint --role ops:oncall)` acts as an on-call engineer.
    """
    from services.cli.devidp import DEFAULT_ROLES, MAX_TOKEN_TTL, DevIdpMissing, load_dev_idp

    steward_home = StewardHome(home.expanduser().resolve())
    if not 0 < ttl <= MAX_TOKEN_TTL.total_seconds():
        raise click.BadParameter("between 1s and 12h", param_hint="--ttl")
    try:
        idp = load_dev_idp(steward_home.idp_dir)
    except DevIdpMissing as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    issued = idp.mint(subject=subject, roles=roles or DEFAULT_ROLES, ttl=dt.timedelta(seconds=ttl))
    saved = str(idp.save_operator_token(issued)) if save else None
    if json_output:
        click.echo(
            json.dumps(
                {
                    "token": issued.token,
                    "subject": issued.subject,
                    "roles": list(issued.roles),
                    "expires_at": issued.expires_at.isoformat(),
                    "saved_to": saved,
                }
            )
        )
    else:
        click.echo(issued.token)
        note = f"; saved to {saved}" if saved else ""
        click.echo(
            f"{', '.join(issued.roles)} as {issued.subject}, expires {issued.expires_at:%Y-%m-%d %H:%M}Z{note}",
            err=True,
        )
