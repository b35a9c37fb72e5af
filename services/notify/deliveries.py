"""The delivery engine: exactly-once effect per (cause, channel, recipient, template version), lanes, retries.

1. **Plan** (:func:`plan`, inside the caller's transaction): the idempotency key — SHA-256 over tenant, cause
   (``request:<hash of the caller's key>`` or ``event:<event id>``), channel, recipient (kind and id) and template
   version — goes in with the delivery under a unique constraint *before* anything is sent; the same cause again
   finds the first delivery and sends nothing. Template variables are sealed into ``notify_payloads``.
2. **Send** (:class:`DeliveryEngine`, a background task on the injected clock): due deliveries are claimed
   (``SENDING`` with a lease), their payload and the address (a tenant contact's, opened from its sealed row, or a
   subject's, asked from the vault at send time) are held in memory only, and the lane's rules are checked *at
   send time*: marketing needs an active consent for the recipient, channel and purpose and an address that is not
   suppressed; service is stopped only by a hard bounce; critical goes regardless.
3. **Settle** (:func:`settle`): ``SENT``; ``SUPPRESSED`` (and the address's hash on the suppression list) for a
   permanent refusal; a transient one is retried with capped full-jitter backoff until ``max_attempts``.
   An **ambiguous** send (answer lost, or a claim whose lease ran out) is never resent in the marketing lane (at
   most once: a second promotional message is worse than a missing one) and is resent with the *same reference*
   (Message-ID / WhatsApp callback data) in the critical and service lanes (at least once: a missing breach or
   DSR notice is worse than a duplicate the recipient's mail system can collapse by Message-ID).
   A delivery that is final has its payload deleted; the row keeps ids, hashes, codes and times only.

One circuit breaker per channel: while it is open nothing is sent on that channel and due deliveries wait
(their attempt is not counted).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from services.chassis.circuit import CircuitBreaker
from services.chassis.clock import Clock
from services.chassis.db import Database
from services.chassis.errors import DomainError, NotFound, Reason
from services.chassis.ids import new_id
from services.chassis.tasks import BackgroundTask
from services.notify import consent, contacts, statuses
from services.notify.channels import Channel, Lane, Outcome, OutgoingMessage, SendResult
from services.notify.consent import Recipient
from services.notify.keys import TenantKeys
from services.notify.models import ContactRow, DeliveryRow, PayloadRow
from services.notify.pacing import Pacer
from services.notify.settings import DeliverySettings
from services.notify.templates import TemplateCatalogue

log = logging.getLogger("steward.notify.deliveries")

__all__ = [
    "FINAL",
    "AddressBook",
    "DeliveryContext",
    "DeliveryEngine",
    "Plan",
    "Settlement",
    "SettlementWriter",
    "StaticAddressBook",
    "idempotency_key",
    "plan",
    "plan_all",
    "settle",
]

PAYLOAD = "payload"
# Bound parameters per IN list: well below SQLite's and PostgreSQL's limits, whatever the size of a fan-out.
_IN_CHUNK = 500
FINAL = frozenset({"SENT", "AMBIGUOUS", "DELIVERED", "READ", "FAILED", "SUPPRESSED"})
# Suppression reasons that stop service notices too (the address does not exist); others stop marketing only.
HARD_BOUNCES = frozenset({"smtp_5xx", "wa_131026"})
# The vault's refusals that mean "nothing may be sent to this subject": the delivery is suppressed, not retried.
SUBJECT_BARRED = frozenset({Reason.SUBJECT_ERASED, Reason.SUBJECT_RESTRICTED})
NEEDS_TEMPLATE_REASON = "wa_131047"
# Outcomes that say "the provider answered": the breaker counts them as the channel being alive.
_ALIVE = frozenset({Outcome.SENT, Outcome.SUPPRESS, Outcome.NEEDS_TEMPLATE, Outcome.RETRY_AFTER})


class AddressBook(Protocol):
    """Where a data subject's address comes from at send time (the vault, over notify's mTLS identity)."""

    async def address(self, tenant_id: str, subject_id: str, channel: str) -> str:
        """The subject's email address or E.164 number for ``channel``; "" when the vault holds none."""
        ...


class StaticAddressBook:
    """An address book with fixed entries: the stand-in until the vault's address method is wired, and for tests."""

    def __init__(self, entries: Mapping[tuple[str, str, str], str] | None = None) -> None:
        self.entries = dict(entries or {})

    async def address(self, tenant_id: str, subject_id: str, channel: str) -> str:
        """The configured address or ""."""
        return self.entries.get((tenant_id, subject_id, channel), "")


@dataclass(frozen=True, slots=True)
class Plan:
    """What to send: one template to one recipient on one channel, for one cause."""

    tenant_id: str
    cause: str
    channel: str
    lane: Lane
    template_version: str
    recipient: Recipient
    variables: Mapping[str, str]
    purpose: str = ""


@dataclass
class DeliveryContext:
    """What the engine's steps share: keys, clock, templates, the recipient-hash key and the limits."""

    keys: TenantKeys
    clock: Clock
    catalogue: TemplateCatalogue
    hash_key: bytes
    settings: DeliverySettings
    # (tenant id, recipient, channel, purpose) -> the https URL of a signed one-click unsubscribe token
    unsubscribe_link: Callable[[str, Recipient, str, str], str]
    rng: random.Random
    # The approved WhatsApp template sent instead of a text notice refused outside the 24 h window (131047).
    reengagement_template: str = ""
    # Preferences, quiet hours and rate limits of the service and marketing lanes (pacing.py); None: not paced.
    pacer: Pacer | None = None

    def recipient_hash(self, channel: str, address: str) -> str:
        """Keyed hash of a normalised address (what deliveries and the suppression list keep)."""
        normalised = address.strip().lower() if channel == "email" else address.strip()
        return hmac.new(self.hash_key, f"{channel}:{normalised}".encode(), hashlib.sha256).hexdigest()

    def backoff_s(self, attempts: int) -> float:
        """Capped full jitter: uniform in [0, min(cap, base * 2^(attempts-1))]."""
        ceiling = min(self.settings.backoff_cap_s, self.settings.backoff_base_s * 2 ** max(attempts - 1, 0))
        return self.rng.uniform(0, ceiling)


def _field(value: str) -> bytes:
    encoded = value.encode()
    return len(encoded).to_bytes(4, "big") + encoded


def idempotency_key(tenant_id: str, cause: str, channel: str, recipient: Recipient, template_version: str) -> str:
    """Hex SHA-256 of the fields that make a message the same message."""
    fields = ("notify.idem.v1", tenant_id, cause, channel, recipient.kind, recipient.id, template_version)
    return hashlib.sha256(b"".join(_field(f) for f in fields)).hexdigest()


def plan(session: Session, ctx: DeliveryContext, p: Plan) -> tuple[DeliveryRow, bool]:
    """Insert the delivery (and its sealed payload) unless its idempotency key exists: (delivery, replayed)."""
    return plan_all(session, ctx, [p])[0]


def plan_all(session: Session, ctx: DeliveryContext, plans: Sequence[Plan]) -> list[tuple[DeliveryRow, bool]]:
    """:func:`plan` for many deliveries at once (a fan-out): one SELECT for their idempotency keys and one flush
    that claims the new keys before any payload is sealed; (delivery, replayed) for each plan, in order."""
    keys = [idempotency_key(p.tenant_id, p.cause, p.channel, p.recipient, p.template_version) for p in plans]
    found: dict[str, DeliveryRow] = {}
    for chunk in range(0, len(keys), _IN_CHUNK):
        query = select(DeliveryRow).where(DeliveryRow.idempotency_key.in_(keys[chunk : chunk + _IN_CHUNK]))
        found.update((row.idempotency_key, row) for row in session.scalars(query))
    now = ctx.clock.now()
    answer: list[tuple[DeliveryRow, bool]] = []
    new: list[tuple[DeliveryRow, Plan]] = []
    for p, key in zip(plans, keys, strict=True):
        earlier = found.get(key)
        if earlier is not None:
            answer.append((earlier, True))
            continue
        delivery_id = new_id()
        template, locale, _ = p.template_version.split("/")
        row = DeliveryRow(
            delivery_id=delivery_id,
            tenant_id=p.tenant_id,
            idempotency_key=key,
            cause=p.cause,
            channel=p.channel,
            lane=p.lane.value,
            template=template,
            template_version=p.template_version,
            locale=locale,
            purpose=p.purpose,
            recipient_kind=p.recipient.kind,
            recipient_id=p.recipient.id,
            recipient_hash="",
            status="QUEUED",
            reason_code="",
            attempts=0,
            reference=delivery_id.replace("-", ""),
            provider_ref="",
            consent_id="",
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
            final_at=None,
        )
        session.add(row)
        found[key] = row  # the same message twice in one fan-out is planned once
        new.append((row, p))
        answer.append((row, False))
    session.flush()  # the unique keys are claimed here, before any send
    for row, p in new:
        key_id, sealed = ctx.keys.seal(session, p.tenant_id, PAYLOAD, row.delivery_id, dict(p.variables))
        session.add(PayloadRow(delivery_id=row.delivery_id, tenant_id=p.tenant_id, key_id=key_id, sealed=sealed))
    return answer


def get(session: Session, tenant_id: str, delivery_id: str) -> DeliveryRow:
    """The tenant's delivery (NOT_FOUND for another tenant's too)."""
    row = session.get(DeliveryRow, delivery_id) if delivery_id else None
    if row is None or row.tenant_id != tenant_id:
        raise NotFound("no such delivery for this tenant", reason=Reason.DELIVERY_NOT_FOUND)
    return row


def list_deliveries(
    session: Session, tenant_id: str, *, subject_id: str, status: str, page_size: int, after: str
) -> list[DeliveryRow]:
    """A page of the tenant's deliveries in id order (ids are time-ordered)."""
    query = select(DeliveryRow).where(DeliveryRow.tenant_id == tenant_id)
    if subject_id:
        query = query.where(DeliveryRow.recipient_kind == "subject", DeliveryRow.recipient_id == subject_id)
    if status:
        query = query.where(DeliveryRow.status == status)
    if after:
        query = query.where(DeliveryRow.delivery_id > after)
    return list(session.scalars(query.order_by(DeliveryRow.delivery_id).limit(page_size)))


# ------------------------------------------------------------------------------------------------- sending


@dataclass
class Job:
    """A claimed delivery with what its send needs, in memory only."""

    delivery_id: str
    tenant_id: str
    channel: str
    lane: Lane
    template_version: str
    purpose: str
    recipient: Recipient
    reference: str
    attempts: int
    variables: dict[str, str]
    address: str = ""
    # The last attempt was refused outside WhatsApp's 24 h window: send the re-engagement template this time.
    needs_template: bool = False
    # What this attempt sends: a WhatsApp template (True) or a text (session) message.
    sends_template: bool = False


def _finish(row: DeliveryRow, status: str, reason: str, now: object) -> None:
    """Make ``row`` final; its caller deletes the payload (:func:`_drop_payloads`, one statement per batch)."""
    row.status = status
    row.reason_code = reason
    row.next_attempt_at = None
    row.final_at = now  # type: ignore[assignment]
    row.updated_at = now  # type: ignore[assignment]


def _drop_payloads(session: Session, delivery_ids: list[str]) -> None:
    """Delete the sealed payloads of deliveries that became final in this transaction."""
    if delivery_ids:
        # A Core statement: no payload object of these deliveries is used after it, nothing in the session to update.
        payloads = PayloadRow.__table__
        session.execute(delete(payloads).where(payloads.c.delivery_id.in_(delivery_ids)))  # type: ignore[arg-type]


def claim(session: Session, ctx: DeliveryContext, *, limit: int) -> list[Job]:
    """Claim due deliveries (queued, or sending with a lapsed lease) and open what their sends need."""
    now = ctx.clock.now()
    rows = session.scalars(
        select(DeliveryRow)
        .where(
            or_(DeliveryRow.status == "QUEUED", DeliveryRow.status == "SENDING"),
            DeliveryRow.next_attempt_at <= now,
        )
        .order_by(DeliveryRow.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    # Load what the rows need in a few queries (not a few per row), held here: the session's identity map holds
    # rows weakly, so rows nobody references would be read again one by one.
    ids = [row.delivery_id for row in rows]
    payloads = {p.delivery_id: p for p in session.scalars(select(PayloadRow).where(PayloadRow.delivery_id.in_(ids)))}
    contact_ids = {row.recipient_id for row in rows if row.recipient_kind == "contact"}
    contact_rows = (
        {c.contact_id: c for c in session.scalars(select(ContactRow).where(ContactRow.contact_id.in_(contact_ids)))}
        if contact_ids
        else {}
    )
    preferences = ctx.pacer.preferences(session, rows) if ctx.pacer is not None else {}
    jobs: list[Job] = []
    finished: list[str] = []
    for row in rows:
        lane = Lane(row.lane)
        if row.status == "SENDING" and lane == Lane.MARKETING:
            # The last attempt's answer was never recorded: it may have gone out. At most once.
            _finish(row, "AMBIGUOUS", "attempt_lost", now)
            finished.append(row.delivery_id)
            continue
        verdict = ctx.pacer.check(session, row, now, preferences=preferences) if ctx.pacer is not None else None
        if verdict is not None and (verdict.final or verdict.until is not None):
            if verdict.final:
                _finish(row, verdict.final, verdict.reason, now)
                finished.append(row.delivery_id)
            else:
                row.next_attempt_at, row.reason_code, row.updated_at = verdict.until, verdict.reason, now
            continue
        payload = payloads.get(row.delivery_id)
        if payload is None:
            _finish(row, "FAILED", "payload_missing", now)
            finished.append(row.delivery_id)
            continue
        variables = ctx.keys.open(session, row.tenant_id, PAYLOAD, row.delivery_id, payload.key_id, payload.sealed)
        who = Recipient(row.recipient_kind, row.recipient_id)
        address = ""
        if who.kind == "contact":
            contact = contact_rows.get(who.id)
            found = (
                contacts.open_contact(session, ctx.keys, contact)
                if contact is not None and contact.tenant_id == row.tenant_id
                else None
            )
            address = (found.email if row.channel == "email" else found.phone) if found else ""
            if not address:
                _finish(row, "FAILED", "contact_gone", now)
                finished.append(row.delivery_id)
                continue
        row.status = "SENDING"
        row.attempts += 1
        row.next_attempt_at = now + timedelta(seconds=ctx.settings.sending_lease_s)
        row.updated_at = now
        jobs.append(
            Job(
                row.delivery_id,
                row.tenant_id,
                row.channel,
                lane,
                row.template_version,
                row.purpose,
                who,
                row.reference,
                row.attempts,
                variables,
                address,
                needs_template=row.reason_code == NEEDS_TEMPLATE_REASON,
            )
        )
    _drop_payloads(session, finished)
    return jobs


def decide(session: Session, ctx: DeliveryContext, job: Job, recipient_hash: str) -> tuple[str, str]:
    """The lane's rules at send time: ("", consent id) to send, or (reason, "") when the delivery is suppressed."""
    if job.lane == Lane.CRITICAL:
        return "", ""
    row = session.get(DeliveryRow, job.delivery_id)
    if row is not None:
        row.recipient_hash = recipient_hash
    suppressed = consent.suppression_reason(session, job.tenant_id, job.channel, recipient_hash)
    if job.lane == Lane.SERVICE:
        return ("suppressed", "") if suppressed in HARD_BOUNCES else ("", "")
    if suppressed:
        return "suppressed", ""
    consent_id = consent.allowing_consent(session, job.tenant_id, job.recipient, job.channel, job.purpose)
    return ("", consent_id) if consent_id else ("no_consent", "")


@dataclass(frozen=True, slots=True)
class Settlement:
    """A send's outcome, to record: the claimed job, what the channel said, and what the lane's check found."""

    job: Job
    result: SendResult
    recipient_hash: str = ""
    consent_id: str = ""


def settle(session: Session, ctx: DeliveryContext, settlements: Sequence[Settlement]) -> list[str]:
    """Record sends' outcomes (see the module docstring); returns each delivery's new status ("" if it is gone).

    One SELECT for the rows, one INSERT for the WhatsApp message ids and one DELETE for the payloads of the
    deliveries that became final, whatever the number of settlements (in the caller's one transaction).
    """
    ids = [item.job.delivery_id for item in settlements]
    query = select(DeliveryRow).where(DeliveryRow.delivery_id.in_(ids))
    rows = {row.delivery_id: row for row in session.scalars(query)}
    now = ctx.clock.now()
    finished: list[str] = []
    tracked: list[tuple[str, str, str]] = []
    answer: list[str] = []
    for item in settlements:
        row = rows.get(item.job.delivery_id)
        if row is None:
            answer.append("")
            continue
        _record(session, ctx, row, item, now)
        if row.status in FINAL:
            finished.append(row.delivery_id)
        if row.status == "SENT" and row.channel == "whatsapp" and row.provider_ref:
            tracked.append((row.provider_ref, row.delivery_id, row.tenant_id))
        answer.append(row.status)
    statuses.track(session, tracked)
    _drop_payloads(session, finished)
    return answer


def _record(session: Session, ctx: DeliveryContext, row: DeliveryRow, item: Settlement, now: datetime) -> None:
    job, result = item.job, item.result
    row.recipient_hash = item.recipient_hash or row.recipient_hash
    row.consent_id = item.consent_id or row.consent_id
    row.updated_at = now
    outcome = result.outcome
    if outcome == Outcome.SENT:
        row.provider_ref = result.provider_ref
        _finish(row, "SENT", result.reason, now)
    elif outcome == Outcome.NEEDS_TEMPLATE and not job.sends_template and ctx.reengagement_template:
        # Outside the 24 h window a text cannot be sent; the approved template can, at once (no backoff: the
        # provider answered, nothing is overloaded).
        row.status = "QUEUED"
        row.reason_code = result.reason
        row.next_attempt_at = now
    elif outcome == Outcome.SUPPRESS:
        consent.suppress(
            session, ctx.clock, row.tenant_id, row.channel, item.recipient_hash, job.recipient, result.reason
        )
        _finish(row, "SUPPRESSED", result.reason, now)
    elif outcome == Outcome.AMBIGUOUS and job.lane == Lane.MARKETING:
        _finish(row, "AMBIGUOUS", result.reason, now)
    elif outcome in (Outcome.RETRY, Outcome.RETRY_AFTER, Outcome.AMBIGUOUS):
        if row.attempts >= ctx.settings.max_attempts:
            _finish(row, "FAILED", result.reason, now)
        else:
            delay = ctx.backoff_s(row.attempts)
            if outcome == Outcome.RETRY_AFTER and result.retry_after_s:
                delay = max(delay, result.retry_after_s)
            row.status = "QUEUED"
            row.reason_code = result.reason
            row.next_attempt_at = now + timedelta(seconds=delay)
    else:  # REFUSED, NEEDS_TEMPLATE without a template to switch to: not retried blindly; on-call sees the reason
        _finish(row, "FAILED", result.reason, now)


def postpone(session: Session, ctx: DeliveryContext, job: Job, wait_s: float, reason: str) -> None:
    """Give a claimed delivery back without counting the attempt (the channel's breaker is open)."""
    row = session.get(DeliveryRow, job.delivery_id)
    if row is None:
        return
    row.status = "QUEUED"
    row.attempts = max(row.attempts - 1, 0)
    row.reason_code = reason
    row.next_attempt_at = ctx.clock.now() + timedelta(seconds=wait_s)


def finish_unsent(session: Session, ctx: DeliveryContext, job: Job, status: str, reason: str) -> None:
    """End a claimed delivery without sending (suppressed, no address, malformed address)."""
    row = session.get(DeliveryRow, job.delivery_id)
    if row is not None:
        _finish(row, status, reason, ctx.clock.now())
        _drop_payloads(session, [row.delivery_id])


class SettlementWriter:
    """Records finished sends in batches: every send that finishes while a batch is being written joins the next
    one, so a fan-out pays one transaction (and one SELECT and one DELETE) per batch rather than per send.

    A batch is one transaction: all of it commits or none of it does. If it fails, each of its settlements is
    written again in a transaction of its own, so one that cannot be recorded fails only its own send's task.
    """

    def __init__(self, db: Database, ctx: DeliveryContext) -> None:
        self.db = db
        self.ctx = ctx
        self._pending: list[tuple[Settlement, asyncio.Future[str]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0

    async def settle(self, item: Settlement) -> str:
        """Record ``item`` with whatever else is waiting; returns the delivery's new status once committed."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return await future

    async def drain(self) -> None:
        """Wait until every settlement handed in so far is written (the engine's stop)."""
        if self._writer is not None:
            await asyncio.wait({self._writer})

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            self.batches += 1
            try:
                answer = await self.db.run(partial(settle, ctx=self.ctx, settlements=[item for item, _ in batch]))
            except Exception as exc:
                if len(batch) == 1:
                    _resolve(batch[0][1], error=exc)
                else:
                    log.warning("settling a batch failed; settling each alone", extra={"batch": len(batch)})
                    await asyncio.gather(*(self._write_alone(item, future) for item, future in batch))
                continue
            for (_, future), status in zip(batch, answer, strict=True):
                _resolve(future, status)

    async def _write_alone(self, item: Settlement, future: asyncio.Future[str]) -> None:
        try:
            (status,) = await self.db.run(partial(settle, ctx=self.ctx, settlements=[item]))
        except Exception as exc:
            _resolve(future, error=exc)
        else:
            _resolve(future, status)


def _resolve(future: asyncio.Future[str], status: str = "", *, error: BaseException | None = None) -> None:
    if future.done():
        return  # its send was cancelled (the engine stopped); the outcome is recorded all the same
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(status)


class DeliveryEngine(BackgroundTask):
    """Sends due deliveries: wakes on :meth:`wake` (a new delivery) or every ``scan_interval_s``."""

    def __init__(
        self,
        db: Database,
        ctx: DeliveryContext,
        channels: Mapping[str, Channel],
        addresses: AddressBook,
        *,
        breakers: Mapping[str, CircuitBreaker],
    ) -> None:
        super().__init__("notify-deliveries")
        self.db = db
        self.ctx = ctx
        self.channels = dict(channels)
        self.addresses = addresses
        self.breakers = dict(breakers)
        self.settlements = SettlementWriter(db, ctx)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sent = 0

    def wake(self) -> None:
        """Look for due deliveries now (safe from any thread)."""
        loop = self._loop
        if loop is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        """Remember the loop (for :meth:`wake` from worker threads), then run."""
        self._loop = asyncio.get_running_loop()
        await super().start()

    async def finish(self) -> None:
        """Record the outcomes of the sends that finished before the stop."""
        await self.settlements.drain()

    async def run(self) -> None:
        """Process, then wait for a wake-up or the scan interval, forever."""
        while True:
            try:
                await self.process_due()
            except Exception as exc:
                log.warning("delivery round failed; retrying next round", extra={"error_type": type(exc).__name__})
            try:
                await asyncio.wait_for(self._wake.wait(), self.ctx.settings.scan_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()

    async def process_due(self) -> int:
        """Claim and send every due delivery until none is due; returns how many were attempted.

        Up to ``batch`` sends are in flight. More are claimed as soon as half of them have finished, so one slow
        send (a relay that greylists, a timeout) holds up nothing but itself. A round that fails (the database)
        lets the sends already in flight finish, then raises.
        """
        limit = self.ctx.settings.batch
        refill = max(limit // 2, 1)
        in_flight: set[asyncio.Task[None]] = set()
        failure: BaseException | None = None
        total = 0
        more = True
        try:
            while True:
                room = limit - len(in_flight)
                if failure is None and ((more and room >= refill) or not in_flight):
                    try:
                        jobs = await self.db.run(partial(claim, ctx=self.ctx, limit=room))
                    except Exception as exc:
                        failure, jobs = exc, []
                    in_flight.update(asyncio.create_task(self._send(job)) for job in jobs)
                    total += len(jobs)
                    more = len(jobs) == room
                if not in_flight:
                    if failure is not None:
                        raise failure
                    return total
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if failure is None and task.exception() is not None:
                        failure = task.exception()
        finally:
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _send(self, job: Job) -> None:
        try:
            await self._send_one(job)
        except DomainError as exc:
            # The address source refused (unknown subject) or is down: the delivery ends or waits.
            log.info("delivery not sent", extra={"delivery_id": job.delivery_id, "reason": exc.reason})
            status = "QUEUED" if exc.code.name == "UNAVAILABLE" else "FAILED"
            if exc.reason in SUBJECT_BARRED:
                status = "SUPPRESSED"
            reason = str(exc.reason)
            await self.db.run(lambda s: self._end_or_retry(s, job, status, reason))
        finally:
            job.variables.clear()
            job.address = ""

    def _end_or_retry(self, session: Session, job: Job, status: str, reason: str) -> None:
        if status == "QUEUED":
            settle(session, self.ctx, [Settlement(job, SendResult(Outcome.RETRY, reason.lower()))])
        else:
            finish_unsent(session, self.ctx, job, status, reason.lower())

    async def _send_one(self, job: Job) -> None:
        ctx = self.ctx
        channel = self.channels.get(job.channel)
        if channel is None:
            await self.db.run(lambda s: finish_unsent(s, ctx, job, "FAILED", "channel_not_configured"))
            return
        if job.recipient.kind == "subject":
            job.address = await self.addresses.address(job.tenant_id, job.recipient.id, job.channel)
        if not job.address:
            await self.db.run(lambda s: finish_unsent(s, ctx, job, "FAILED", "no_address"))
            return
        try:
            if job.channel == "email":
                contacts.valid_email(job.address, "address")
            else:
                contacts.valid_phone(job.address, "address")
        except DomainError:
            await self.db.run(lambda s: finish_unsent(s, ctx, job, "FAILED", "malformed_address"))
            return
        recipient_hash = ctx.recipient_hash(job.channel, job.address)
        # Critical notices go regardless: no consent or suppression to read, so no database round for them.
        blocked, consent_id = (
            ("", "") if job.lane == Lane.CRITICAL else await self.db.run(lambda s: decide(s, ctx, job, recipient_hash))
        )
        if blocked:
            await self.db.run(lambda s: finish_unsent(s, ctx, job, "SUPPRESSED", blocked))
            return
        breaker = self.breakers.get(job.channel)
        if breaker is not None and not breaker.allow():
            wait = max(breaker.retry_after_s(), 0.05)
            await self.db.run(lambda s: postpone(s, ctx, job, wait, "breaker_open"))
            return
        message = self._message(job)
        job.sends_template = bool(message.template_name)
        try:
            result = await channel.send(message)
        except Exception as exc:
            # A channel must not raise; if it does we cannot know whether it sent.
            log.warning("channel raised", extra={"channel": job.channel, "error_type": type(exc).__name__})
            result = SendResult(Outcome.AMBIGUOUS, "channel_error")
        if breaker is not None:
            if result.outcome in _ALIVE or result.reason == "smtp_4xx":
                breaker.record_success()
            else:
                breaker.record_failure()
        status = await self.settlements.settle(Settlement(job, result, recipient_hash, consent_id))
        if status == "SENT":
            self.sent += 1
        log.info(
            "delivery attempted",
            extra={
                "delivery_id": job.delivery_id,
                "channel": job.channel,
                "outcome": result.outcome.value,
                "reason": result.reason,
                "status": status,
                "attempt": job.attempts,
            },
        )

    def _message(self, job: Job) -> OutgoingMessage:
        ctx = self.ctx
        template = job.template_version.split("/")[0]
        locale = job.template_version.split("/")[1]
        rendered = ctx.catalogue.render(template, locale, job.variables, version=job.template_version)
        headers: dict[str, str] = {}
        if job.channel == "email" and job.lane != Lane.CRITICAL:
            link = ctx.unsubscribe_link(job.tenant_id, job.recipient, job.channel, job.purpose)
            headers["List-Unsubscribe"] = f"<{link}>"
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        wa_template, wa_parameters = rendered.wa_template, rendered.wa_parameters
        if job.channel == "whatsapp" and job.needs_template and not wa_template:
            wa_template, wa_parameters = ctx.reengagement_template, ()
        return OutgoingMessage(
            recipient=job.address,
            lane=job.lane,
            reference=job.reference,
            subject=rendered.subject,
            text_body=rendered.text,
            html_body=rendered.html,
            template_name=wa_template,
            language=locale,
            parameters=wa_parameters,
            headers=headers,
        )
