"""A restored vault database never serves an erased subject: apply the ledger's tombstones it does not reflect.

The erasure ledger (:mod:`services.vault.tombstones`) is a separate database, restored on its own, so after
the vault database is restored from a backup taken before some erasures the ledger is ahead of it: its
high-water mark is above the database's ``applied`` mark. :func:`apply_pending_tombstones` is the vault's
start-up step (it runs before the server reports SERVING and before the DSR task consumer starts): it reads
the two marks (one primary-key read per database) and, only when the ledger is ahead, erases again, tenant
by tenant, every subject a newer tombstone names that the database has again, then sets the mark, logs the
count and stages a ``vault.tombstones.applied`` event. :func:`apply_all_tombstones` (``ApplyAllTombstones``,
``steward tombstones apply --all``) does the same for every tombstone of the ledger.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import enqueue, make_event
from services.chassis.db import Database
from services.chassis.errors import FailedPrecondition, NotFound
from services.chassis.identity import CallerIdentity
from services.vault import audit, subjects
from services.vault.domain import VaultContext
from services.vault.tombstones import TombstoneRecord, applied_mark, raise_applied_mark

__all__ = ["AppliedTombstones", "apply_all_tombstones", "apply_pending_tombstones", "reapply_for_tenant"]

log = logging.getLogger("steward.vault.tombstones")

VAULT_PRINCIPAL = "service:vault"


@dataclass(frozen=True, slots=True)
class AppliedTombstones:
    """What one pass did: tombstones checked, subjects erased again, tenants touched, the mark now reached."""

    tombstones_checked: int = 0
    subjects_reerased: int = 0
    tenants: int = 0
    high_water_mark: int = 0


def reapply_for_tenant(
    session: Session, ctx: VaultContext, identity: CallerIdentity, tombstones: Sequence[TombstoneRecord]
) -> int:
    """Erase again what this database has of ``tombstones`` (all of ``identity``'s tenant); audited. Re-erased count."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    reerased = sum(1 for tomb in tombstones if subjects.reapply_tombstone(session, ctx, tenant.tenant_id, tomb))
    audit.append(session, tenant, identity, "tombstones.apply", [], f"reerased:{reerased}", at=ctx.clock.now())
    return reerased


async def apply_pending_tombstones(db: Database, ctx: VaultContext) -> AppliedTombstones:
    """The start-up step: apply the tombstones the ledger holds beyond the database's ``applied`` mark.

    Nothing pending costs two primary-key reads. Raises (and the vault does not start) when either database
    cannot be read: serving a restored database unchecked could serve an erased person.
    """
    high = await ctx.ledger.database.call(ctx.ledger.high_water_mark)
    applied = await db.run(applied_mark)
    if applied is not None and applied >= high:
        return AppliedTombstones(high_water_mark=applied)
    if applied is None and high == 0:  # a new vault and an empty ledger: start the mark
        await db.run(lambda s: raise_applied_mark(s, 0, now=ctx.clock.now()))
        return AppliedTombstones()
    pending = await ctx.ledger.database.call(ctx.ledger.since, applied or 0)
    return await _apply(db, ctx, pending, high, principal=VAULT_PRINCIPAL, principal_kind="service")


async def apply_all_tombstones(db: Database, ctx: VaultContext, identity: CallerIdentity) -> AppliedTombstones:
    """``ApplyAllTombstones``: every tombstone of the ledger, for every tenant, on the operator's behalf."""
    high = await ctx.ledger.database.call(ctx.ledger.high_water_mark)
    every = await ctx.ledger.database.call(ctx.ledger.since, 0)
    return await _apply(db, ctx, every, high, principal=identity.principal, principal_kind=identity.principal_kind)


async def _apply(
    db: Database,
    ctx: VaultContext,
    tombstones: Sequence[TombstoneRecord],
    high: int,
    *,
    principal: str,
    principal_kind: str,
) -> AppliedTombstones:
    by_tenant: dict[str, list[TombstoneRecord]] = defaultdict(list)
    for tomb in tombstones:
        by_tenant[tomb.tenant_id].append(tomb)
    reerased = 0
    for tenant_id, tenant_tombstones in by_tenant.items():
        identity = CallerIdentity(tenant_id=tenant_id, principal=principal, principal_kind=principal_kind)
        reerased += await db.run(
            functools.partial(_reapply_if_present, ctx=ctx, identity=identity, tombstones=tenant_tombstones),
            isolated=True,
        )
    result = AppliedTombstones(len(tombstones), reerased, len(by_tenant), high)
    await db.run(lambda s: _finish(s, ctx, result), isolated=True)
    log.warning(
        "tombstones applied: the database was behind the erasure ledger",
        extra={
            "tombstones_checked": result.tombstones_checked,
            "subjects_reerased": result.subjects_reerased,
            "tenants": result.tenants,
            "high_water_mark": high,
        },
    )
    return result


def _reapply_if_present(
    session: Session, ctx: VaultContext, identity: CallerIdentity, tombstones: Sequence[TombstoneRecord]
) -> int:
    try:
        return reapply_for_tenant(session, ctx, identity, tombstones)
    except (NotFound, FailedPrecondition):
        return 0  # no vault for the tenant here (created after the backup) or shredded: nothing to bring back


def _finish(session: Session, ctx: VaultContext, result: AppliedTombstones) -> None:
    now = ctx.clock.now()
    raise_applied_mark(session, result.high_water_mark, now=now)
    enqueue(
        session,
        make_event(
            events_pb2.TombstonesApplied(
                count=result.subjects_reerased,
                tenants=result.tenants,
                high_water_mark=result.high_water_mark,
                tombstones_checked=result.tombstones_checked,
            ),
            source=ctx.source,
            occurred_at=now,
        ),
    )
