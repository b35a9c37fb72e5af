"""``steward breach declare|status|ack|impact``: personal-data breach incidents (notify, through the gateway).

Operators (``ops:admin``) declare a breach; every affected tenant's contacts are notified at once. ``status``
shows the controllers' clocks (CERT-In 6 h, regulator 72 h, counted from detection) and who has acknowledged.
``ack`` records an acknowledgement: a tenant with the token of its ack link (``--token`` is then the tenant's
API key with ``keys:manage``), or an operator recording one received by phone (``--tenant``). ``impact`` lists
the tenants a leaked credential or principal touched in a window, from notify's access log.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import click
from google.protobuf.timestamp_pb2 import Timestamp
from steward.notify.v1 import notify_pb2 as pb
from steward.notify.v1 import notify_pb2_grpc

from services.cli.ops.invocation import DURATION, Invocation, operator_command
from services.cli.render import as_json, enum_label, fields_text, table, timestamp_text

__all__ = ["breach"]

_STATES = {name.removeprefix("BREACH_STATE_").lower(): value for name, value in pb.BreachState.items() if value}


def _stub(run: Invocation) -> Any:
    return notify_pb2_grpc.NotifyServiceStub(run.client.channel)  # type: ignore[no-untyped-call]


def _when(value: str, option: str) -> Timestamp:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time (e.g. 2026-12-01T08:30Z)", param_hint=option
        ) from None
    stamp = Timestamp()
    stamp.FromDatetime(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
    return stamp


def _show(run: Invocation, b: Any) -> None:
    acked = sum(1 for a in b.acknowledgements if a.acknowledged)
    head = fields_text(
        [
            ("breach", b.breach_id),
            ("state", enum_label(b, "state")),
            ("detected", timestamp_text(b, "detected_at")),
            ("declared", timestamp_text(b, "declared_at")),
            ("CERT-In report due (6 h)", timestamp_text(b, "cert_in_deadline")),
            ("regulator report due (72 h)", timestamp_text(b, "regulator_deadline")),
            ("tenants", f"{len(b.acknowledgements)} affected, {acked} acknowledged"),
            ("categories", ", ".join(b.data_categories)),
        ]
    )
    rows = [
        [a.tenant_id, "yes" if a.acknowledged else "NO", timestamp_text(a, "acknowledged_at"), a.notices_sent]
        for a in b.acknowledgements
    ]
    text = head + "\n\n" + table(("tenant", "acknowledged", "at", "notices sent"), rows)
    run.emit({"breach": as_json(b)}, text)


@click.group()
def breach() -> None:
    """Personal-data breaches: notify every affected tenant at once, track acknowledgements and deadlines."""


@operator_command(breach, "declare")
@click.option("--nature", required=True, help="What happened (no customer data).")
@click.option("--category", "categories", multiple=True, required=True, help="A data category code; repeatable.")
@click.option("--tenant", "tenants", multiple=True, help="An affected tenant id; repeatable.")
@click.option("--all-tenants", is_flag=True, help="Every tenant with contacts is affected.")
@click.option("--detected-at", required=True, help="When it was detected (ISO 8601, UTC if no offset).")
@click.option("--contact-point", required=True, help="Steward's contact for the controllers (DPO / incident lead).")
@click.option("--measures", required=True, help="What has been done and will be done.")
@click.option("--idempotency-key", required=True, help="The incident id: declaring again with it changes nothing.")
def breach_declare(
    run: Invocation,
    nature: str,
    categories: tuple[str, ...],
    tenants: tuple[str, ...],
    all_tenants: bool,
    detected_at: str,
    contact_point: str,
    measures: str,
    idempotency_key: str,
) -> None:
    """Declare a breach: every affected tenant's contacts are notified now, on every channel they have."""
    request = pb.DeclareBreachRequest(
        nature=nature,
        data_categories=list(categories),
        tenant_ids=list(tenants),
        all_tenants=all_tenants,
        detected_at=_when(detected_at, "--detected-at"),
        contact_point=contact_point,
        measures=measures,
        idempotency_key=idempotency_key,
    )
    _show(run, run.client.call(_stub(run).DeclareBreach, request).breach)


@operator_command(breach, "status")
@click.argument("breach_id", required=False, default="")
@click.option("--state", type=click.Choice(sorted(_STATES)), default=None, help="Move the breach forward.")
@click.option("--measures", default="", help="Replace the measures the notices describe.")
def breach_status(run: Invocation, breach_id: str, state: str | None, measures: str) -> None:
    """One breach's clocks and acknowledgements (all breaches without an id); --state/--measures update it."""
    stub = _stub(run)
    if not breach_id:
        page = run.client.call(stub.ListBreaches, pb.ListBreachesRequest(page_size=500))
        rows = [
            [
                b.breach_id,
                enum_label(b, "state"),
                timestamp_text(b, "cert_in_deadline"),
                timestamp_text(b, "regulator_deadline"),
                f"{sum(1 for a in b.acknowledgements if a.acknowledged)}/{len(b.acknowledgements)}",
            ]
            for b in page.breaches
        ]
        text = table(("breach", "state", "CERT-In due", "regulator due", "acknowledged"), rows)
        run.emit({"breaches": [as_json(b) for b in page.breaches]}, text)
        return
    if state or measures:
        request = pb.UpdateBreachRequest(
            breach_id=breach_id,
            measures=measures,
            state=_STATES[state] if state else pb.BREACH_STATE_UNSPECIFIED,  # type: ignore[arg-type]
        )
        found = run.client.call(stub.UpdateBreach, request).breach
    else:
        found = run.client.call(stub.GetBreach, pb.GetBreachRequest(breach_id=breach_id)).breach
    _show(run, found)


@operator_command(breach, "ack")
@click.argument("breach_id")
@click.option("--ack-token", default="", help="The k= value of the ack link (a tenant acknowledging).")
@click.option("--tenant", "tenant_id", default="", help="Record a tenant's acknowledgement (operators).")
def breach_ack(run: Invocation, breach_id: str, ack_token: str, tenant_id: str) -> None:
    """Acknowledge a breach notice: a tenant with its link's token, or an operator for a tenant."""
    if bool(ack_token) == bool(tenant_id):
        raise click.UsageError("give --ack-token (a tenant) or --tenant (an operator recording it), not both")
    stub = _stub(run)
    if ack_token:
        answer = run.client.call(
            stub.AcknowledgeBreach, pb.AcknowledgeBreachRequest(breach_id=breach_id, token=ack_token)
        )
        a = answer.acknowledgement
        run.emit({"acknowledgement": as_json(a)}, f"acknowledged: breach {breach_id}, tenant {a.tenant_id}")
        return
    found = run.client.call(
        stub.UpdateBreach, pb.UpdateBreachRequest(breach_id=breach_id, acknowledge_tenant_id=tenant_id)
    ).breach
    _show(run, found)


@operator_command(breach, "impact")
@click.option("--credential", "credential_id", default="", help="An API key id.")
@click.option("--principal", default="", help='A principal, e.g. "key:..." or "operator:...".')
@click.option("--since", "since_s", type=DURATION, default="7d", show_default=True, help="Window: how far back.")
def breach_impact(run: Invocation, credential_id: str, principal: str, since_s: int) -> None:
    """Which tenants (and subjects) a credential or principal touched in the window, from the access log."""
    if bool(credential_id) == bool(principal):
        raise click.UsageError("give exactly one of --credential or --principal")
    end = datetime.now(UTC)
    start, stop = Timestamp(), Timestamp()
    start.FromDatetime(end - timedelta(seconds=since_s))
    stop.FromDatetime(end + timedelta(seconds=1))
    request = pb.BreachImpactRequest(
        credential_id=credential_id, principal=principal, window_start=start, window_end=stop
    )
    answer = run.client.call(_stub(run).BreachImpact, request)
    rows = [[t.tenant_id, t.accesses, _subjects_cell(t)] for t in answer.tenants]
    run.emit(
        {"tenants": [as_json(t) for t in answer.tenants]},
        table(("tenant", "accesses", "subjects touched"), rows, empty="(no tenant touched in the window)"),
    )


def _subjects_cell(tenant: pb.ImpactedTenant) -> str:
    """How many subjects were touched, or why the vault could not say (the subjects are then unknown, not none)."""
    if tenant.subjects_unavailable_reason:
        return f"unknown: {tenant.subjects_unavailable_reason}"
    return str(len(tenant.subject_ids))
