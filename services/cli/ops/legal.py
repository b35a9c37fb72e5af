"""``steward legal record|approve|reject|execute|list|report``: the register of legal disclosure requests.

Operators only (``ops:admin``, ``ops:oncall`` to record and read). Subjects are named by identifier on
``record`` and resolved by the gateway in the tenant's vault; the register keeps subject ids only. ``approve``
must come from a second operator (four eyes). ``execute`` writes the disclosed records as JSON lines to
``--out`` (the file the authority receives) and prints the summary.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp
from steward.legal.v1 import legal_pb2, legal_pb2_grpc
from steward.vault.v1 import vault_pb2

from services.cli.ops.invocation import Invocation, operator_command
from services.cli.render import as_json, enum_label, fields_text, table, timestamp_text

__all__ = ["legal"]

_AUTHORITIES = ["law-enforcement", "court", "regulator", "tax", "other"]
_KINDS = ["lead-contact", "interaction", "opportunity", "note", "custom"]
_STATES = ["recorded", "approved", "rejected", "executed"]


def _stub(run: Invocation) -> Any:
    return legal_pb2_grpc.LegalRequestServiceStub(run.client.channel)  # type: ignore[no-untyped-call]


def _stamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return stamp


def _identifier(text: str) -> vault_pb2.SubjectIdentifiers:
    kind, sep, value = text.partition(":")
    if not sep or kind not in ("email", "phone", "external_id"):
        raise click.BadParameter(f"{text!r}: use email:<address>, phone:<number> or external_id:<id>")
    return vault_pb2.SubjectIdentifiers(**{kind: value})


def _row(r: Any) -> list[object]:
    return [
        r.legal_request_id,
        r.tenant_id,
        enum_label(r, "authority_type"),
        enum_label(r, "state"),
        len(r.subject_ids),
        timestamp_text(r, "recorded_at"),
        timestamp_text(r, "notice_released_at"),
    ]


_HEADERS = ("request", "tenant", "authority", "state", "subjects", "recorded", "notice released")


def _text(r: Any) -> str:
    return fields_text(
        [
            ("request", r.legal_request_id),
            ("tenant", r.tenant_id),
            ("authority", f"{r.authority} ({enum_label(r, 'authority_type')})"),
            ("legal basis", r.legal_basis),
            ("reference", r.reference_number),
            ("state", enum_label(r, "state")),
            ("subjects", " ".join(r.subject_ids)),
            ("non-disclosure", enum_label(r.nondisclosure, "kind")),
            ("recorded", f"{timestamp_text(r, 'recorded_at')} by {r.recorded_by}"),
            ("decided", f"{timestamp_text(r, 'decided_at')} by {r.decided_by or '-'}"),
            ("executed", timestamp_text(r, "executed_at")),
            ("notice released", timestamp_text(r, "notice_released_at")),
        ]
    )


@click.group()
def legal() -> None:
    """Legal disclosure requests: record, four-eyes approval, scoped execution, notices, transparency report."""


@operator_command(legal, "record")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--authority", required=True, help="The requesting body, e.g. 'Cyber Crime Cell, Pune'.")
@click.option("--authority-type", type=click.Choice(_AUTHORITIES), required=True)
@click.option("--legal-basis", required=True, help="E.g. 'BNSS s.94'.")
@click.option("--reference", required=True, help="The authority's reference number.")
@click.option("--subject", "subjects", multiple=True, required=True, help="email:..., phone:... or external_id:...")
@click.option("--from", "window_start", type=click.DateTime(), required=True, help="Window start (UTC).")
@click.option("--to", "window_end", type=click.DateTime(), required=True, help="Window end (UTC).")
@click.option("--category", "categories", type=click.Choice(_KINDS), multiple=True, required=True)
@click.option("--ndo", type=click.Choice(["none", "until", "indefinite"]), required=True)
@click.option("--ndo-until", type=click.DateTime(), help="With --ndo until: the date the notice is released.")
@click.option("--review-at", type=click.DateTime(), help="With --ndo indefinite (required) or until: a review date.")
def legal_record(
    run: Invocation,
    tenant_id: str,
    authority: str,
    authority_type: str,
    legal_basis: str,
    reference: str,
    subjects: tuple[str, ...],
    window_start: datetime,
    window_end: datetime,
    categories: tuple[str, ...],
    ndo: str,
    ndo_until: datetime | None,
    review_at: datetime | None,
) -> None:
    """Record a request (the identifiers are resolved now and not kept)."""
    order = legal_pb2.NondisclosureOrder(
        kind=legal_pb2.NondisclosureKind.Value(f"NONDISCLOSURE_KIND_{'UNTIL_DATE' if ndo == 'until' else ndo.upper()}")
    )
    if ndo_until is not None:
        order.until.CopyFrom(_stamp(ndo_until))
    if review_at is not None:
        order.review_at.CopyFrom(_stamp(review_at))
    request = legal_pb2.RecordLegalRequestRequest(
        tenant_id=tenant_id,
        authority=authority,
        authority_type=legal_pb2.AuthorityType.Value("AUTHORITY_TYPE_" + authority_type.replace("-", "_").upper()),
        legal_basis=legal_basis,
        reference_number=reference,
        subjects=[_identifier(s) for s in subjects],
        window_start=_stamp(window_start),
        window_end=_stamp(window_end),
        data_categories=[vault_pb2.RecordKind.Value("RECORD_KIND_" + k.replace("-", "_").upper()) for k in categories],
        nondisclosure=order,
    )
    recorded = run.client.call(_stub(run).RecordLegalRequest, request).legal_request
    run.emit({"legal_request": as_json(recorded)}, _text(recorded) + "\nA second operator approves it.")


@operator_command(legal, "approve")
@click.argument("legal_request_id")
def legal_approve(run: Invocation, legal_request_id: str) -> None:
    """Approve (ops:admin; never the operator who recorded it)."""
    request = legal_pb2.ApproveLegalRequestRequest(legal_request_id=legal_request_id)
    approved = run.client.call(_stub(run).ApproveLegalRequest, request).legal_request
    run.emit({"legal_request": as_json(approved)}, _text(approved))


@operator_command(legal, "reject")
@click.argument("legal_request_id")
@click.option("--reason", required=True, help="10-500 characters, no contact details.")
def legal_reject(run: Invocation, legal_request_id: str, reason: str) -> None:
    """Reject a request not yet executed."""
    request = legal_pb2.RejectLegalRequestRequest(legal_request_id=legal_request_id, reason=reason)
    rejected = run.client.call(_stub(run).RejectLegalRequest, request).legal_request
    run.emit({"legal_request": as_json(rejected)}, _text(rejected))


@operator_command(legal, "execute")
@click.argument("legal_request_id")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSON-lines file.")
@click.option(
    "--only", "only", multiple=True, help="Narrow to approved subjects: email:..., phone:..., external_id:..."
)
def legal_execute(run: Invocation, legal_request_id: str, out: Path, only: tuple[str, ...]) -> None:
    """Export the approved scope under the request's audited grant into --out (ops:admin, once)."""
    request = legal_pb2.ExecuteLegalRequestRequest(
        legal_request_id=legal_request_id, only_subjects=[_identifier(s) for s in only]
    )
    summary = None
    with out.open("w", encoding="utf-8") as sink:
        for item in run.client.stream(_stub(run).ExecuteLegalRequest, request):
            if item.WhichOneof("item") == "record":
                sink.write(json.dumps(MessageToDict(item.record, preserving_proto_field_name=True)) + "\n")
            else:
                summary = item.summary
    if summary is None:
        raise click.ClickException("the execution ended without a summary; nothing is complete, do not hand --out over")
    text = _text(summary.legal_request) + f"\n{summary.records} records of {summary.subjects} subjects written to {out}"
    run.emit({"summary": as_json(summary), "out": str(out)}, text)


@operator_command(legal, "list")
@click.option("--tenant", "tenant_id", default="")
@click.option("--state", type=click.Choice(_STATES))
def legal_list(run: Invocation, tenant_id: str, state: str | None) -> None:
    """List requests, newest first."""
    request = legal_pb2.ListLegalRequestsRequest(
        tenant_id=tenant_id,
        state=legal_pb2.LegalRequestState.Value(f"LEGAL_REQUEST_STATE_{(state or 'unspecified').upper()}"),
    )
    found = run.client.call(_stub(run).ListLegalRequests, request).legal_requests
    run.emit({"legal_requests": [as_json(r) for r in found]}, table(_HEADERS, [_row(r) for r in found]))


@operator_command(legal, "report")
@click.option("--year", type=int, default=0, help="0: every year.")
def legal_report(run: Invocation, year: int) -> None:
    """Transparency report: requests and subjects per quarter, authority type and outcome (no personal data)."""
    rows = run.client.call(_stub(run).TransparencyReport, legal_pb2.TransparencyReportRequest(year=year)).rows
    text = table(
        ("quarter", "authority", "outcome", "requests", "subjects"),
        [[r.quarter, enum_label(r, "authority_type"), r.outcome, r.requests, r.subjects] for r in rows],
    )
    run.emit({"rows": [as_json(r) for r in rows]}, text)
