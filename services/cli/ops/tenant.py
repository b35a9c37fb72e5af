"""``steward tenant create|get|close|reopen|offboarding-status``: business clients in the gateway's registry."""

from __future__ import annotations

from typing import Any

import click
from google.protobuf.json_format import MessageToDict
from steward.dsr.v1 import dsr_pb2
from steward.gateway.v1 import gateway_pb2
from steward.vault.v1 import vault_pb2

from services.cli.client import GatewayCallError
from services.cli.ops.invocation import Invocation, operator_command
from services.cli.render import as_json, enum_label, fields_text, timestamp_text

__all__ = ["tenant"]


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


@operator_command(tenant, "reopen")
@click.argument("tenant_id")
def tenant_reopen(run: Invocation, tenant_id: str) -> None:
    """Reopen a closed tenant within its grace period (ops:admin); refused after it or after the shred."""
    client = run.client
    reopened = client.call(client.admin.ReopenTenant, gateway_pb2.ReopenTenantRequest(tenant_id=tenant_id)).tenant
    run.emit({"tenant": as_json(reopened)}, _tenant_text(reopened))


_LIST_OFFBOARDING = "/steward.dsr.v1.DsrService/ListOffboarding"


def _dsr_offboarding(run: Invocation, tenant_id: str) -> tuple[dict[str, Any] | None, str]:
    """The dsr side (reminders, hold, certificate) as a dict, or None with why it is unavailable.

    dsr's ``ListOffboarding`` is newer than this command may be: without it in the generated code the call goes
    out raw and UNIMPLEMENTED (or a gateway without its policy) is reported as "not available", never an error.
    """
    client = run.client
    request_type = getattr(dsr_pb2, "ListOffboardingRequest", None)
    response_type = getattr(dsr_pb2, "ListOffboardingResponse", None)
    request = request_type() if request_type is not None else None
    if request is not None and "tenant_id" in request.DESCRIPTOR.fields_by_name:
        request.tenant_id = tenant_id
    method = client.channel.unary_unary(
        _LIST_OFFBOARDING,
        request_serializer=lambda message: message.SerializeToString() if message is not None else b"",
        response_deserializer=response_type.FromString if response_type is not None else (lambda raw: raw),
    )
    try:
        answer = client.call(method, request, tenant_id=tenant_id)
    except GatewayCallError as err:
        if err.code in ("UNIMPLEMENTED", "UNAVAILABLE"):
            return None, f"not available (dsr answered {err.code}: ListOffboarding is not served or dsr is down)"
        raise
    if isinstance(answer, bytes):
        return None, "not available (this CLI has no ListOffboarding message to decode dsr's answer)"
    return MessageToDict(answer, preserving_proto_field_name=True), ""


@operator_command(tenant, "offboarding-status")
@click.argument("tenant_id")
def tenant_offboarding_status(run: Invocation, tenant_id: str) -> None:
    """Where a tenant is on its offboarding timeline: closed_at, shred_after, vault state; reminders, legal
    holds and the shred certificate come from dsr (shown as not available until dsr serves ListOffboarding)."""
    client = run.client
    found = client.call(client.admin.GetTenant, gateway_pb2.GetTenantRequest(tenant_id=tenant_id)).tenant
    try:
        vault_tenant = client.call(client.vault_admin.GetTenant, vault_pb2.GetTenantRequest(), tenant_id=tenant_id)
        vault_state = enum_label(vault_tenant.tenant, "state")
    except GatewayCallError as err:
        if err.reason != "TENANT_SHREDDED":
            raise
        vault_state = "shredded"
    dsr_side, dsr_note = _dsr_offboarding(run, tenant_id)
    rows: list[tuple[str, object]] = [
        ("tenant", found.tenant_id),
        ("registry state", enum_label(found, "state")),
        ("vault state", vault_state),
        ("closed", timestamp_text(found, "closed_at")),
        ("closed by", found.closed_by or "-"),
        ("grace period", f"{found.grace_period_days} days"),
        ("shred after", timestamp_text(found, "shred_after")),
        ("reopened", timestamp_text(found, "reopened_at")),
    ]
    if dsr_side is None:
        rows.append(("reminders, holds, certificate", dsr_note))
    else:
        rows.extend((key.replace("_", " "), value) for key, value in dsr_side.items())
    run.emit(
        {"tenant": as_json(found), "vault_state": vault_state, "dsr": dsr_side, "dsr_note": dsr_note},
        fields_text(rows),
    )
