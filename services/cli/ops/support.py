"""``steward support grant|request|approve|list|revoke|accesses``: time-boxed support access."""

from __future__ import annotations

from typing import Any

import click
from steward.gateway.v1 import gateway_pb2

from services.cli.ops.invocation import DURATION, Invocation, operator_command
from services.cli.render import as_json, duration_text, enum_label, table, timestamp_text

__all__ = ["support"]


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
