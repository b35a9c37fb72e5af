"""``steward audit list|verify``: a tenant's tamper-evident access audit in the vault."""

from __future__ import annotations

import sys
from typing import Any

import click
from steward.vault.v1 import vault_pb2

from services.cli.client import EXIT_REFUSED
from services.cli.ops.invocation import Invocation, operator_command
from services.cli.render import as_json, table, timestamp_text

__all__ = ["audit"]


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
    sys.exit(EXIT_REFUSED)
