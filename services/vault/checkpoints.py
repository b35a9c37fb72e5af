"""Signed audit checkpoints: the head of a tenant's audit chain, signed by the vault's Transit Ed25519 key.

The hash chain (:mod:`services.vault.audit`) shows that entries were edited, but whoever can write the
database can rewrite an entry and recompute every later hash and the head. A checkpoint binds
``(tenant, seq, head hash, time)`` to a signature only Transit can make, and each one is also published as
an ``AuditCheckpointed`` event (a store the database writer does not control) and can be fetched by the
tenant (``GetAuditCheckpoint``). Verification checks each stored signature against the public key read
from Transit, then the chain against every head that verified.

When: the :class:`AuditCheckpointer` signs, off the request path, every tenant whose chain grew by
``every_entries`` or changed ``interval_s`` ago (one query to find them, one batched Transit call to sign
them all, one transaction to store them), and a shred or a tenant's request signs at once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import enqueue, make_event
from services.chassis.db import Database
from services.chassis.signatures import signature_verifies
from services.chassis.tasks import BackgroundTask
from services.chassis.timestamps import to_timestamp
from services.chassis.transit import TransitClient
from services.vault import audit
from services.vault.domain import VaultContext
from services.vault.models import AuditCheckpoint, TenantVault

__all__ = [
    "MESSAGE_FORMAT",
    "AuditCheckpointer",
    "Head",
    "checkpoint_message",
    "checkpoint_now",
    "due_heads",
    "signature_verifies",
    "signed_fields",
    "verify_chain",
]

log = logging.getLogger("steward.vault.checkpoints")

MESSAGE_FORMAT = "steward.audit.checkpoint.v1"


@dataclass(frozen=True, slots=True)
class Head:
    """A chain head to sign: the hash of entry ``seq`` of ``tenant_id``'s chain."""

    tenant_id: str
    seq: int
    head_hash: str


def checkpoint_message(tenant_id: str, seq: int, head_hash: str, signed_at: datetime) -> bytes:
    """The exact bytes a checkpoint signs: compact JSON a tenant can rebuild from the checkpoint's fields."""
    fields = [MESSAGE_FORMAT, tenant_id, seq, head_hash, audit.canonical_time(signed_at)]
    return json.dumps(fields, separators=(",", ":")).encode()


def _message_of(row: AuditCheckpoint) -> bytes:
    return checkpoint_message(row.tenant_id, row.seq, row.head_hash, row.signed_at)


def _sign(transit: TransitClient, heads: Sequence[Head], signed_at: datetime) -> list[AuditCheckpoint]:
    messages = [checkpoint_message(h.tenant_id, h.seq, h.head_hash, signed_at) for h in heads]
    signatures = transit.sign(messages)
    return [
        AuditCheckpoint(
            tenant_id=h.tenant_id,
            seq=h.seq,
            head_hash=h.head_hash,
            signed_at=signed_at,
            signature=s.value,
            key_version=s.key_version,
        )
        for h, s in zip(heads, signatures, strict=True)
    ]


def signed_fields(row: AuditCheckpoint) -> dict[str, Any]:
    """The checkpoint's fields as the event and the API carry them (both messages share these names)."""
    return {
        "tenant_id": row.tenant_id,
        "seq": row.seq,
        "head_hash": row.head_hash,
        "signed_at": to_timestamp(row.signed_at),
        "signature": row.signature,
        "key_version": row.key_version,
    }


def _store(session: Session, ctx: VaultContext, rows: Sequence[AuditCheckpoint], reason: str) -> None:
    """Insert the checkpoints not stored yet, move each tenant's checkpoint mark, and publish each as an event."""
    for row in rows:
        if session.get(AuditCheckpoint, (row.tenant_id, row.seq)) is not None:
            continue  # that head is signed already (a shred or a request got there first)
        row.reason = reason
        session.add(row)
        session.execute(
            update(TenantVault)
            .where(TenantVault.tenant_id == row.tenant_id, TenantVault.audit_checkpoint_seq < row.seq)
            .values(audit_checkpoint_seq=row.seq, audit_checkpoint_at=row.signed_at)
            .execution_options(synchronize_session=False)
        )
        enqueue(
            session,
            make_event(events_pb2.AuditCheckpointed(**signed_fields(row)), source=ctx.source, tenant_id=row.tenant_id),
        )
    session.flush()


def checkpoint_now(session: Session, ctx: VaultContext, tenant: TenantVault, reason: str) -> AuditCheckpoint:
    """Sign ``tenant``'s current head and store it (the caller holds the tenant lock); one Transit call.

    Returns the stored checkpoint at the head (an existing one if that head was signed already).
    """
    head = Head(tenant.tenant_id, tenant.audit_seq, tenant.audit_head)
    existing = session.get(AuditCheckpoint, (head.tenant_id, head.seq))
    if existing is not None:
        return existing
    [row] = _sign(ctx.keyring.transit, [head], ctx.clock.now())
    _store(session, ctx, [row], reason)
    return row


def verify_chain(session: Session, transit: TransitClient, tenant_id: str) -> audit.ChainReport:
    """Check every stored checkpoint's signature, then the chain against the heads that verified.

    A checkpoint whose signature does not verify (public keys come from Transit) is refused as an anchor and
    reported as ``bad_checkpoint_seq``; the chain is then not intact even if every hash recomputes.
    """
    anchors: dict[int, str] = {}
    bad = 0
    for row in session.scalars(
        select(AuditCheckpoint).where(AuditCheckpoint.tenant_id == tenant_id).order_by(AuditCheckpoint.seq)
    ):
        if signature_verifies(transit.signing_public_key(row.key_version), _message_of(row), row.signature):
            anchors[row.seq] = row.head_hash
        elif not bad:
            bad = row.seq
    report = audit.verify(session, tenant_id, anchors)
    if not bad:
        return report
    fault = report.fault if not report.intact else audit.Fault.CHECKPOINT_SIGNATURE_INVALID
    return replace(report, intact=False, fault=fault, bad_checkpoint_seq=bad)


def due_heads(session: Session, *, every_entries: int, interval_s: float, now: datetime) -> list[Head]:
    """Heads of every tenant whose chain grew ``every_entries`` past its last checkpoint, or grew at all and
    was last signed (or created, if never) ``interval_s`` ago."""
    t = TenantVault
    since = now - timedelta(seconds=interval_s)
    rows = session.execute(
        select(t.tenant_id, t.audit_seq, t.audit_head).where(
            t.audit_seq > t.audit_checkpoint_seq,
            or_(
                t.audit_seq - t.audit_checkpoint_seq >= every_entries,
                t.audit_checkpoint_at <= since,
                and_(t.audit_checkpoint_at.is_(None), t.created_at <= since),
            ),
        )
    ).all()
    return [Head(tenant_id, seq, head) for tenant_id, seq, head in rows]


class AuditCheckpointer(BackgroundTask):
    """Background task: every ``poll_s``, sign the heads that are due (:func:`due_heads`) in one Transit call.

    Signing never runs in a request's transaction; the write path only moves ``audit_seq``, which the due
    query compares with the last checkpoint. Time comes from the vault's injected clock, so tests move it
    instead of sleeping.
    """

    def __init__(
        self,
        db: Database,
        ctx: VaultContext,
        *,
        every_entries: int,
        interval_s: float,
        poll_s: float = 1.0,
        batch: int = 200,
    ) -> None:
        super().__init__("audit-checkpointer")
        self.db = db
        self.ctx = ctx
        self.every_entries = every_entries
        self.interval_s = interval_s
        self.poll_s = min(poll_s, interval_s)
        self.batch = batch
        self.signed = 0

    async def start(self) -> None:
        """Create the signing key if missing (best effort: Transit may be down) and start the loop."""
        try:
            await self.db.call(self.ctx.keyring.transit.create_signing_key)
        except Exception as exc:  # the first signature retries it; start-up must not depend on Transit
            log.warning("audit-signing key not checked at start-up", extra={"error_type": type(exc).__name__})
        await super().start()

    async def run_once(self) -> int:
        """Sign and store every due head; returns how many were signed."""
        now = self.ctx.clock.now()
        heads = await self.db.run(
            lambda s: due_heads(s, every_entries=self.every_entries, interval_s=self.interval_s, now=now)
        )
        for start in range(0, len(heads), self.batch):
            chunk = heads[start : start + self.batch]
            rows = await self.db.call(_sign, self.ctx.keyring.transit, chunk, now)
            await self.db.run(functools.partial(_store, ctx=self.ctx, rows=rows, reason="due"))
            self.signed += len(rows)
        return len(heads)

    async def run(self) -> None:
        """A pass every ``poll_s``; stopping abandons a pass in flight (the next start signs what is still due)."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("audit checkpoint pass failed; will retry", extra={"error_type": type(exc).__name__})
