"""``steward dsr submit|list|show|approve|reject|extend|overdue|evidence``: data-subject requests.

Tenant actions (submit, approve, reject, extend) need the tenant's API key as ``--token`` (``dsr:submit`` /
``dsr:manage``); operators (``ops:oncall``, ``ops:admin``) read a tenant's requests with ``--tenant`` and list
overdue requests of every tenant. ``evidence --verify`` checks the signed evidence offline: with the public key
GetEvidence returns and nothing else (no OpenBao, no database), exiting 1 when any entry fails.
"""

from __future__ import annotations

import base64
import sys
from typing import Any

import click
from steward.dsr.v1 import dsr_pb2 as pb

from services.cli.client import EXIT_REFUSED
from services.cli.ops.invocation import Invocation, operator_command
from services.cli.render import as_json, enum_label, fields_text, table, timestamp_text

__all__ = ["dsr"]

_TYPES = {name.removeprefix("REQUEST_TYPE_").lower(): value for name, value in pb.RequestType.items() if value}
_STATES = {name.removeprefix("REQUEST_STATE_").lower(): value for name, value in pb.RequestState.items() if value}
_REJECTIONS = {
    name.removeprefix("REJECTION_REASON_").lower(): value for name, value in pb.RejectionReason.items() if value
}
_EXTENSIONS = {
    name.removeprefix("EXTENSION_REASON_").lower(): value for name, value in pb.ExtensionReason.items() if value
}
_HEADERS = ("request id", "tenant", "type", "state", "received", "due", "reason")


def _rows(requests: Any) -> list[list[object]]:
    return [
        [
            r.request_id,
            r.tenant_id,
            enum_label(r, "type"),
            enum_label(r, "state"),
            timestamp_text(r, "received_at"),
            timestamp_text(r, "due_at"),
            r.reason_code or "-",
        ]
        for r in requests
    ]


def _tenant(tenant_id: str) -> str | None:
    return tenant_id or None  # an API key carries its tenant; operators name one


def _emit_page(run: Invocation, page: Any) -> None:
    text = table(_HEADERS, _rows(page.requests))
    if page.next_page_token:
        text += f"\nmore: --page-token {page.next_page_token}"
    run.emit({"requests": [as_json(r) for r in page.requests], "next_page_token": page.next_page_token}, text)


@click.group()
def dsr() -> None:
    """Data-subject requests: answered within 30 days, with signed evidence."""


@operator_command(dsr, "submit")
@click.option("--type", "kind", type=click.Choice(sorted(_TYPES)), required=True)
@click.option("--email", default="")
@click.option("--phone", default="")
@click.option("--external-id", default="")
@click.option("--minor", is_flag=True, help="The controller says the subject is a minor (deletion due in 72 h).")
@click.option("--channel", default="", help="A code: email, web_form, phone ...")
@click.option("--verified-by", default="", help="Id of the controller's agent or system that verified the requester.")
@click.option("--verification-method", default="", help="A code: email_link, logged_in_session ...")
@click.option("--idempotency-key", default="", help="A retry with the same key returns the same request.")
def dsr_submit(
    run: Invocation,
    kind: str,
    email: str,
    phone: str,
    external_id: str,
    minor: bool,
    channel: str,
    verified_by: str,
    verification_method: str,
    idempotency_key: str,
) -> None:
    """Submit a request for a data subject (the tenant's API key with dsr:submit as --token)."""
    given = {k: v for k, v in (("email", email), ("phone", phone), ("external_id", external_id)) if v}
    if len(given) != 1:
        raise click.UsageError("name the subject with exactly one of --email, --phone or --external-id")
    request = pb.SubmitRequestRequest(
        type=_TYPES[kind],  # type: ignore[arg-type]
        subject=pb.SubjectIdentifier(**given),
        is_minor=minor,
        channel=channel,
        verification=pb.IdentityVerification(method=verification_method, verified_by=verified_by),
        idempotency_key=idempotency_key,
    )
    client = run.client
    answer = client.call(client.dsr.SubmitRequest, request)
    text = table(_HEADERS, _rows([answer.request]))
    if answer.replayed:
        text += "\n(replayed: this idempotency key was used before; this is the first call's request)"
    run.emit({"request": as_json(answer.request), "replayed": answer.replayed}, text)


@operator_command(dsr, "list")
@click.option("--tenant", "tenant_id", default="", help="The tenant (operators); an API key implies its own.")
@click.option("--state", type=click.Choice(sorted(_STATES)), default=None)
@click.option("--overdue", is_flag=True, help="Only unfinished requests past their due date.")
@click.option("--page-size", type=click.IntRange(1, 500), default=100, show_default=True)
@click.option("--page-token", default="")
def dsr_list(
    run: Invocation, tenant_id: str, state: str | None, overdue: bool, page_size: int, page_token: str
) -> None:
    """List a tenant's requests, oldest first."""
    request = pb.ListRequestsRequest(
        state=_STATES[state] if state else pb.REQUEST_STATE_UNSPECIFIED,  # type: ignore[arg-type]
        overdue_only=overdue,
        page_size=page_size,
        page_token=page_token,
    )
    client = run.client
    page = client.call(client.dsr.ListRequests, request, tenant_id=_tenant(tenant_id))
    _emit_page(run, page)


@operator_command(dsr, "show")
@click.argument("request_id")
@click.option("--tenant", "tenant_id", default="", help="The tenant (operators); an API key implies its own.")
def dsr_show(run: Invocation, request_id: str, tenant_id: str) -> None:
    """One request with its timeline."""
    client = run.client
    found = client.call(
        client.dsr.GetRequest, pb.GetRequestRequest(request_id=request_id), tenant_id=_tenant(tenant_id)
    )
    r = found.request
    text = fields_text(
        [
            ("request", r.request_id),
            ("tenant", r.tenant_id),
            ("type", enum_label(r, "type")),
            ("state", enum_label(r, "state")),
            ("subject", r.subject_id or "(no data held)"),
            ("received", timestamp_text(r, "received_at")),
            ("due", timestamp_text(r, "due_at")),
            ("extended", enum_label(r, "extension_reason") if r.extension_reason else "no"),
            ("hold", r.hold_id or "-"),
        ]
    )
    steps = [[timestamp_text(t, "at"), enum_label(t, "state"), t.actor, t.reason_code or "-"] for t in r.timeline]
    text += "\n\n" + table(("at", "state", "actor", "reason"), steps)
    run.emit({"request": as_json(r)}, text)


@operator_command(dsr, "approve")
@click.argument("request_id")
def dsr_approve(run: Invocation, request_id: str) -> None:
    """Approve a request awaiting approval (the tenant's API key with dsr:manage as --token)."""
    client = run.client
    answer = client.call(client.dsr.ApproveRequest, pb.ApproveRequestRequest(request_id=request_id))
    run.emit({"request": as_json(answer.request)}, table(_HEADERS, _rows([answer.request])))


@operator_command(dsr, "reject")
@click.argument("request_id")
@click.option("--reason", type=click.Choice(sorted(_REJECTIONS)), required=True)
def dsr_reject(run: Invocation, request_id: str, reason: str) -> None:
    """Reject a request with a reason code (the tenant's API key with dsr:manage as --token)."""
    client = run.client
    request = pb.RejectRequestRequest(request_id=request_id, reason=_REJECTIONS[reason])  # type: ignore[arg-type]
    answer = client.call(client.dsr.RejectRequest, request)
    run.emit({"request": as_json(answer.request)}, table(_HEADERS, _rows([answer.request])))


@operator_command(dsr, "extend")
@click.argument("request_id")
@click.option("--reason", type=click.Choice(sorted(_EXTENSIONS)), required=True)
@click.option("--months", type=click.IntRange(1, 2), required=True, help="Once, by at most two further months.")
def dsr_extend(run: Invocation, request_id: str, reason: str, months: int) -> None:
    """Extend a request's due date (the tenant's API key with dsr:manage as --token)."""
    client = run.client
    request = pb.ExtendDeadlineRequest(
        request_id=request_id,
        reason=_EXTENSIONS[reason],  # type: ignore[arg-type]
        additional_months=months,
    )
    answer = client.call(client.dsr.ExtendDeadline, request)
    run.emit({"request": as_json(answer.request)}, table(_HEADERS, _rows([answer.request])))


@operator_command(dsr, "overdue")
@click.option("--tenant", "tenant_id", default="", help="Only this tenant [every tenant].")
@click.option("--page-size", type=click.IntRange(1, 500), default=100, show_default=True)
@click.option("--page-token", default="")
def dsr_overdue(run: Invocation, tenant_id: str, page_size: int, page_token: str) -> None:
    """Unfinished requests past their due date, of every tenant (ops:admin, ops:oncall)."""
    client = run.client
    request = pb.ListOverdueRequest(page_size=page_size, page_token=page_token)
    page = client.call(client.dsr.ListOverdue, request, tenant_id=_tenant(tenant_id))
    _emit_page(run, page)


@operator_command(dsr, "evidence")
@click.argument("request_id")
@click.option("--tenant", "tenant_id", default="", help="The tenant (operators); an API key implies its own.")
@click.option("--verify", is_flag=True, help="Verify hashes, links and signatures offline with the public key.")
def dsr_evidence(run: Invocation, request_id: str, tenant_id: str, verify: bool) -> None:
    """A request's signed evidence; with --verify, exit 1 unless every entry verifies."""
    from services.dsr.evidence import EntryView, verify_entries

    client = run.client
    answer = client.call(
        client.dsr.GetEvidence, pb.GetEvidenceRequest(request_id=request_id), tenant_id=_tenant(tenant_id)
    )
    rows = [[e.seq, timestamp_text(e, "at"), e.kind, e.facts_json] for e in answer.entries]
    text = table(("seq", "at", "kind", "facts"), rows)
    text += f"\npublic key ({answer.key_name} v{answer.key_version}): {answer.public_key}"
    payload: dict[str, Any] = {
        "entries": [as_json(e) for e in answer.entries],
        "public_key": answer.public_key,
        "key_name": answer.key_name,
        "key_version": answer.key_version,
    }
    if not verify:
        run.emit(payload, text)
        return
    report = verify_entries(
        [EntryView.of_message(e) for e in answer.entries], base64.b64decode(answer.public_key or "")
    )
    payload["verification"] = {
        "valid": report.valid,
        "entries_checked": report.checked,
        "failed_seq": report.failed_seq,
        "failure": report.failure,
    }
    if report.valid:
        run.emit(payload, text + f"\nverified offline: {report.checked} entries, every hash, link and signature")
        return
    run.emit(payload, text + f"\nVERIFICATION FAILED at entry {report.failed_seq}: {report.failure}")
    sys.exit(EXIT_REFUSED)
