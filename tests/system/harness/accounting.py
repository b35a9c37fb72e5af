"""Accounting after a fault: is every acknowledged write still there, once, with one event, and nothing stuck?

Each check reads what the stack really holds — through the gateway (read-back), behind its back (each
service's ``outbox`` table), and on the STEWARD stream as the ``ops`` user (events per record id,
durable consumers' pending counts) — and compares it with the :class:`~tests.system.harness.load.Ledger`.
Nothing here trusts the services' own view of themselves.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
import sqlalchemy as sa
from nats.js.api import ConsumerConfig, DeliverPolicy
from steward.events.v1 import events_pb2
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.nats_permissions import STREAM
from services.client import RetryPolicy, StewardClient
from tests.system.harness.load import Ack, Ledger, marker_of, status_name, store
from tests.system.harness.privacy import PrivacyAccounting
from tests.system.harness.stack import SystemStack

__all__ = ["Accounting", "EventTally", "count_record_events", "outbox_backlog", "read_back", "reconcile", "stuck"]

RECORD_SUBJECTS = "steward.vault.record.>"


@dataclass
class Accounting:
    """The result of one accounting pass (all counts are record ids unless named otherwise; ``privacy`` holds what
    :func:`~tests.system.harness.privacy.account_privacy` found about requests, deliveries and exports)."""

    checked: int = 0
    lost: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    missing_events: list[str] = field(default_factory=list)
    duplicated_events: list[str] = field(default_factory=list)
    outbox_unpublished: dict[str, int] = field(default_factory=dict)
    stuck_consumers: dict[str, tuple[int, int]] = field(default_factory=dict)
    reconciled: int = 0
    committed_but_failed: int = 0
    never_committed: int = 0
    duplicated_by_retry: list[str] = field(default_factory=list)
    unreconciled: dict[str, str] = field(default_factory=dict)
    privacy: PrivacyAccounting = field(default_factory=PrivacyAccounting)

    @property
    def clean(self) -> bool:
        """True when nothing was lost, corrupted, duplicated, left unpublished or stuck."""
        return not (
            self.lost
            or self.corrupted
            or self.unreadable
            or self.missing_events
            or self.duplicated_events
            or any(self.outbox_unpublished.values())
            or self.stuck_consumers
            or self.duplicated_by_retry
            or self.unreconciled
            or not self.privacy.clean
        )


# -- read-back ---------------------------------------------------------------------------------------------------


async def read_back(client: StewardClient, acks: Iterable[Ack], into: Accounting, *, concurrency: int = 8) -> None:
    """GetRecord every ack and compare kind, subject and payload digest; NOT_FOUND is a lost write."""
    queue = list(acks)
    into.checked += len(queue)

    async def worker() -> None:
        while queue:
            ack = queue.pop()
            try:
                record = await client.get_record(ack.record_id)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    into.lost.append(ack.record_id)
                else:
                    into.unreadable[ack.record_id] = status_name(exc)
                continue
            if not ack.matches(record):
                into.corrupted.append(ack.record_id)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# -- committed-but-reported-failed writes --------------------------------------------------------------------------


async def _subject_of(client: StewardClient, new: pb.NewRecord) -> str | None:
    if new.subject_id:
        return new.subject_id
    try:
        request = pb.ResolveSubjectRequest(external_id=new.identifiers.external_id)
        return (await client.call(client.vault.ResolveSubject, request, idempotent=True)).subject_id
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


async def _with_marker(client: StewardClient, subject_id: str | None, marker: str) -> list[str]:
    """Ids of the records of ``subject_id`` whose data carries ``marker`` (every page)."""
    if subject_id is None:
        return []
    found, token = [], ""
    while True:
        page = await client.list_records(subject_id=subject_id, page_size=100, page_token=token)
        found += [record.id for record in page.records if marker_of(record) == marker]
        token = page.next_page_token
        if not token:
            return found


async def reconcile(client: StewardClient, ledger: Ledger, into: Accounting) -> None:
    """Retry every unsettled write with its own idempotency key; each record must then exist exactly once.

    A write with a record already stored before the retry (found by its marker) committed although its caller
    saw a failure; the retry must return that same record, not store a second one. Reconciled writes join the
    ledger, so read-back and the event count cover them too.
    """
    pending, ledger.unsettled = ledger.unsettled, []
    for write in pending:
        try:
            subjects = [await _subject_of(client, new) for new in write.records]
            before = [await _with_marker(client, s, marker_of(n)) for s, n in zip(subjects, write.records, strict=True)]
            stored = await store(client, write.records, write.key)
            after = [
                await _with_marker(client, r.subject_id, marker_of(n))
                for r, n in zip(stored, write.records, strict=True)
            ]
        except grpc.RpcError as exc:
            into.unreconciled[write.key] = f"{write.status} then {status_name(exc)}: {exc.details()}"
            continue
        into.reconciled += 1
        if any(before):
            into.committed_but_failed += 1
        else:
            into.never_committed += 1
        ledger.remember(stored, write.records, write.phase)
        for record, ids, earlier in zip(stored, after, before, strict=True):
            if ids != [record.id] or (earlier and earlier != [record.id]):
                into.duplicated_by_retry.append(record.id)


# -- outbox ------------------------------------------------------------------------------------------------------


def outbox_backlog(stack: SystemStack) -> dict[str, int]:
    """Unpublished outbox rows per service database (read directly, behind the services' back)."""
    backlog = {}
    for service in stack.database_urls():
        with stack.engine(service) as engine, engine.connect() as conn:
            if not sa.inspect(conn).has_table("outbox"):
                continue
            backlog[service] = int(conn.scalar(sa.text("SELECT count(*) FROM outbox WHERE published_at IS NULL")))
    return backlog


# -- events on the STEWARD stream -----------------------------------------------------------------------------------


@dataclass
class EventTally:
    """RecordChanged ``created`` events per record id, read from the stream as ``ops``."""

    created: Counter[str] = field(default_factory=Counter)
    messages: int = 0

    def missing(self, acks: Iterable[str]) -> list[str]:
        """Acknowledged record ids with no created event."""
        return [record_id for record_id in acks if self.created[record_id] == 0]

    def duplicated(self) -> list[str]:
        """Record ids announced as created more than once."""
        return [record_id for record_id, count in self.created.items() if count > 1]


async def count_record_events(stack: SystemStack, *, idle_s: float = 2.0) -> EventTally:
    """Read every RecordChanged message on the stream from the start (an ordered ephemeral consumer)."""
    tally = EventTally()
    nc = await stack.ops_nats()
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM, subjects_filter=RECORD_SUBJECTS)
        expected = sum((info.state.subjects or {}).values()) if info.state.subjects else None
        sub = await js.subscribe(
            RECORD_SUBJECTS,
            stream=STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        try:
            while expected is None or tally.messages < expected:
                try:
                    msg = await sub.next_msg(timeout=idle_s)
                except TimeoutError:
                    break
                tally.messages += 1
                event = events_pb2.Event.FromString(msg.data)
                if event.WhichOneof("payload") != "record_changed":
                    continue
                if event.record_changed.change == events_pb2.RECORD_CHANGE_CREATED:
                    for ref in event.record_changed.records:
                        tally.created[ref.record_id] += 1
                if msg.metadata.num_pending == 0 and expected is None:
                    break
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    return tally


async def stuck(stack: SystemStack) -> dict[str, tuple[int, int]]:
    """Durable consumers with messages pending or unacknowledged: ``{durable: (num_pending, num_ack_pending)}``."""
    nc = await stack.ops_nats()
    try:
        infos = await nc.jetstream().consumers_info(STREAM)
    finally:
        await nc.close()
    return {
        info.name: (info.num_pending or 0, info.num_ack_pending or 0)
        for info in infos
        if info.config.durable_name and ((info.num_pending or 0) or (info.num_ack_pending or 0))
    }


def patient_client(stack: SystemStack) -> StewardClient:
    """A client for accounting: long deadlines and a generous retry budget (the fault is over)."""
    return stack.client(timeout_s=10.0, retry=RetryPolicy(max_attempts=10, budget_s=60.0))
