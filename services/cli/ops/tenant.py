"""``steward tenant create|get|list|close``: business clients in the gateway's registry."""

from __future__ import annotations

from typing import Any

import click
from steward.gateway.v1 import gateway_pb2

from services.cli.ops.invocation import Invocation, operator_command
from services.cli.render import as_json, enum_label, fields_text, table, timestamp_text

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


@operator_command(tenant, "list")
@click.option("--page-size", type=click.IntRange(1, 500), default=100, show_default=True, help="Tenants per page.")
@click.option("--page-token", default="", help="next_page_token of a previous page (continue from there).")
@click.option("--state", type=click.Choice(["active", "closed"]), help="Only tenants in this state [every state].")
@click.option("--all", "all_pages", is_flag=True, help="Follow next_page_token to the end instead of one page.")
def tenant_list(run: Invocation, page_size: int, page_token: str, state: str | None, all_pages: bool) -> None:
    """List tenants by id, one page (or --all); contacts are left out: `steward tenant get` shows them (ops)."""
    client = run.client
    wanted = gateway_pb2.TenantState.Value(f"TENANT_STATE_{(state or 'unspecified').upper()}")
    found: list[Any] = []
    token = page_token
    while True:
        request = gateway_pb2.ListTenantsRequest(page_size=page_size, page_token=token, state=wanted)
        page = client.call(client.admin.ListTenants, request)
        found.extend(page.tenants)
        token = page.next_page_token
        if not token or not all_pages:
            break
    rows = [
        (t.tenant_id, enum_label(t, "state"), t.details.company_name, timestamp_text(t, "created_at")) for t in found
    ]
    text = table(["TENANT", "STATE", "COMPANY", "CREATED"], rows, empty="(no tenants)")
    if token:
        text += f"\nmore: steward tenant list --page-token {token}"
    run.emit({"tenants": [as_json(t) for t in found], "next_page_token": token}, text)


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
