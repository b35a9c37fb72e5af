"""Evidence is signed as its transaction commits, all of a transaction's entries in one Transit call: entries of
units that share a commit are each signed and chained, a unit that fails leaves no entry (and no timeline step)
behind, and when Transit cannot sign nothing is written at all (real OpenBao; an unreachable Transit is a real
client on a closed port)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.chassis.identity import CallerIdentity
from services.chassis.transit import TransitClient
from services.dsr import evidence, requests
from services.dsr.evidence import EntryView, EvidenceSigner, verify_entries
from services.dsr.models import EvidenceRow
from services.dsr.requests import Submission
from tests.plugins.infra import free_port
from tests.plugins.stack import DsrFactory, DsrHarness

TENANT = "t-evidence-signing"


class UnitFailed(Exception):
    """Raised by a unit of work after it appended an entry."""


def _append(signer: EvidenceSigner, request_id: str, *, entries: int = 1, fail: bool = False):  # type: ignore[no-untyped-def]
    def unit(session: Session) -> None:
        for step in range(entries):
            evidence.append(
                session,
                signer,
                tenant_id=TENANT,
                request_id=request_id,
                kind=f"test.step{step}",
                facts={"step": step},
                at=datetime.now(UTC),
            )
        if fail:
            raise UnitFailed

    return unit


def _chain(dsr: DsrHarness) -> list[EvidenceRow]:
    with dsr.app.db.transaction() as session:
        return list(
            session.scalars(select(EvidenceRow).where(EvidenceRow.tenant_id == TENANT).order_by(EvidenceRow.seq))
        )


def _verifies(dsr: DsrHarness, rows: list[EvidenceRow]) -> bool:
    signer = dsr.app.ctx.signer
    return verify_entries([EntryView.of(row) for row in rows], signer.public_key(rows[-1].key_version)).valid


async def test_units_sharing_a_commit_are_each_signed_and_a_failed_one_leaves_nothing(
    dsr_factory: DsrFactory,
) -> None:
    dsr = await dsr_factory()
    signer, db = dsr.app.ctx.signer, dsr.app.db
    # Submitted together, so the group-commit writer runs them in shared transactions; the failing unit makes its
    # batch run again with a savepoint each.
    units = [_append(signer, f"request-{i}", entries=2) for i in range(12)]
    units.insert(5, _append(signer, "request-failed", entries=2, fail=True))
    outcomes = await asyncio.gather(*(db.run(unit) for unit in units), return_exceptions=True)
    assert [type(o).__name__ for o in outcomes].count("UnitFailed") == 1

    rows = _chain(dsr)
    assert [row.seq for row in rows] == list(range(1, 25))
    assert "request-failed" not in {row.request_id for row in rows}
    assert all(row.signature.startswith("vault:v") and row.key_version >= 1 for row in rows)
    assert _verifies(dsr, rows)


async def test_when_transit_cannot_sign_nothing_is_written_and_the_chain_goes_on(dsr_factory: DsrFactory) -> None:
    dsr = await dsr_factory()
    signer, db = dsr.app.ctx.signer, dsr.app.db
    await db.run(_append(signer, "request-before"))
    unreachable = EvidenceSigner(
        TransitClient(
            f"http://127.0.0.1:{free_port()}",
            "no-token",
            key_prefix="steward-dsr-no-tenant-keys-",
            signing_key=signer.key_name,
            connect_timeout_s=0.5,
            read_timeout_s=0.5,
        )
    )
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises, the commit must fail
        await db.run(_append(unreachable, "request-unsigned", entries=2))
    assert [row.request_id for row in _chain(dsr)] == ["request-before"]

    await db.run(_append(signer, "request-after"))
    rows = _chain(dsr)
    assert [(row.seq, row.request_id) for row in rows] == [(1, "request-before"), (2, "request-after")]
    assert _verifies(dsr, rows)


async def test_steps_of_one_request_in_shared_commits_stay_numbered_when_one_unit_fails(
    dsr_factory: DsrFactory,
) -> None:
    dsr = await dsr_factory()
    db, ctx = dsr.app.db, dsr.app.ctx
    who = CallerIdentity(tenant_id=TENANT, principal="tester")
    sub = Submission("RESTRICTION", None, "email", "", "", False, "")
    request_id = "0192f3a4-0000-7000-8000-000000000001"
    await db.run(lambda s: requests.create(s, ctx, who, sub, request_id, "subject-1"))

    def step(state: str, *, fail: bool = False):  # type: ignore[no-untyped-def]
        def unit(session: Session) -> None:
            requests.transition(session, ctx, requests.get(session, TENANT, request_id), state, actor="tester")
            if fail:
                raise UnitFailed

        return unit

    units = [step("IN_PROGRESS"), step("BLOCKED_BY_HOLD", fail=True), step("IN_PROGRESS"), step("COMPLETED")]
    outcomes = await asyncio.gather(*(db.run(unit) for unit in units), return_exceptions=True)
    assert [type(o).__name__ for o in outcomes].count("UnitFailed") == 1
    with db.transaction() as session:
        steps = [(t.seq, t.state) for t in requests.timeline(session, request_id)]
    assert steps == [(1, "RECEIVED"), (2, "IN_PROGRESS"), (3, "IN_PROGRESS"), (4, "COMPLETED")]
    assert _verifies(dsr, _chain(dsr))
