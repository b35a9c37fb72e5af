"""The one event bus: NATS JetStream with a transactional outbox and an idempotent inbox.

Producers call :func:`enqueue` inside the same database transaction as the state change, so the
change and its event commit together. :class:`OutboxRelay` publishes pending rows with
``Nats-Msg-Id`` = event id (JetStream drops duplicates inside its window) and marks a row sent only
after the publish is acknowledged; while NATS is down it backs off and nothing is lost.

Consumers are durable pull consumers (:class:`Consumer`). Each message's handler runs in one
database transaction together with an inbox row keyed by (consumer, event id), so a redelivered
event has no second effect; the message is acked only after that transaction commits, nak'ed with
backoff on error. A handler that keeps failing on one message is copied to ``steward.dlq.<consumer>``
after ``max_deliveries`` and terminated, so the stream keeps flowing; a *transient* failure (a
dependency down: :func:`~services.chassis.errors.is_transient`) is retried with capped backoff for as long as it lasts.
The NATS TLS files (CA, client certificate) are re-read when they change, so a renewed certificate is used from
the next reconnect on without a restart.
Events carry ids only, never customer data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import nats
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry import trace
from sqlalchemy import DateTime, Integer, LargeBinary, String, Text, delete, select, update
from sqlalchemy import event as orm_events
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column
from steward.events.v1 import events_pb2

from services.chassis.catalog import kind_of, subject_for
from services.chassis.clock import SYSTEM_CLOCK
from services.chassis.db import Base, Database
from services.chassis.errors import is_transient
from services.chassis.fastsql import stage_rows
from services.chassis.nats_permissions import inbox_prefix
from services.chassis.settings import NatsSettings
from services.chassis.streams import EVENT_SUBJECTS, StreamsBelowDeclared, check_streams, ensure_events_stream
from services.chassis.tasks import BackgroundTask
from services.chassis.telemetry import extract_context, inject_headers
from services.chassis.timestamps import to_timestamp
from services.chassis.tls_reload import CertificateFiles, ReloadingSslContext

log = logging.getLogger("steward.bus")
tracer = trace.get_tracer("steward.bus")

__all__ = [
    "DLQ_PREFIX",
    "STREAM_SUBJECTS",
    "Bus",
    "Consumer",
    "InboxEntry",
    "OutboxEntry",
    "OutboxRelay",
    "RefusedEvent",
    "enqueue",
    "enqueue_many",
    "make_event",
]

DLQ_PREFIX = "steward.dlq."
# What the STEWARD stream holds: every subject of the event catalog, and the dead letters (declared with the
# rest of the stream in services/chassis/streams.py).
STREAM_SUBJECTS = EVENT_SUBJECTS

Handler = Callable[[Session, events_pb2.Event], None]

_STAGED = "steward.outbox_staged"
"""``Session.info`` key set by :func:`enqueue_many`: this transaction's commit should wake the relay."""


class RefusedEvent(Exception):
    """A handler refuses an event for good: malformed, or from a producer that may not send it.

    :class:`Consumer` dead-letters it at once, with ``reason`` in the ``Steward-Reason`` header, and never
    retries it (retrying cannot make it acceptable). ``reason`` is a stable code, never customer data.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutboxEntry(Base):
    """An event waiting to be published (``published_at`` is null until JetStream acknowledged it)."""

    __tablename__ = "outbox"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=SYSTEM_CLOCK.now, index=True)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class InboxEntry(Base):
    """An event a consumer has already applied; its presence makes redelivery a no-op."""

    __tablename__ = "inbox"

    consumer: Mapped[str] = mapped_column(String(100), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=SYSTEM_CLOCK.now)


def make_event(
    payload: Message, *, source: str, tenant_id: str = "", occurred_at: datetime | None = None
) -> events_pb2.Event:
    """A new envelope around ``payload`` with a fresh id; its type and field come from the event catalog.

    ``occurred_at`` is the producer's clock reading (domain code passes its injected clock's ``now()``);
    without it the system clock stamps the event.
    """
    kind = kind_of(payload)
    event = events_pb2.Event(
        id=str(uuid.uuid4()),
        type=kind.type_for(payload, source),
        occurred_at=to_timestamp(occurred_at or SYSTEM_CLOCK.now()),
        tenant_id=tenant_id,
        source=source,
    )
    getattr(event, kind.field).CopyFrom(payload)
    return event


def enqueue(session: Session, event: events_pb2.Event) -> str:
    """Stage ``event`` in the outbox of ``session``'s transaction; it is published after commit."""
    enqueue_many(session, [event])
    return event.id


def enqueue_many(session: Session, events: Sequence[events_pb2.Event]) -> None:
    """Stage many events with one bulk insert (batch writes such as PutRecords); written before the commit."""
    if not events:
        return
    session.info[_STAGED] = True
    headers = json.dumps(inject_headers())
    # The outbox is a queue ordered by when rows were written, so this is the machine's time, not the
    # (possibly test-driven) domain clock that stamped the events.
    now = SYSTEM_CLOCK.now()
    # Staged: the rows of every unit of a group-commit batch go in one insert, before the commit.
    stage_rows(
        session,
        OutboxEntry.__table__,  # type: ignore[arg-type]
        [
            {
                "id": event.id,
                "subject": subject_for(event.type),
                "payload": event.SerializeToString(),
                "headers": headers,
                "created_at": now,
                "published_at": None,
                "attempts": 0,
            }
            for event in events
        ],
    )


class Bus:
    """A NATS connection that (re)connects in the background and provisions the stream."""

    def __init__(self, settings: NatsSettings, *, name: str, provision: bool = True) -> None:
        self.settings = settings
        self.name = name
        self.provision = provision  # False: connect only (``steward nats apply`` manages the streams itself)
        self.nc: NatsClient | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._connect_task: asyncio.Task[None] | None = None
        self._tls_watch_task: asyncio.Task[None] | None = None
        self.tls: ReloadingSslContext | None = None
        """The client TLS context and its files (``None`` without TLS, or until the files first load)."""
        self.stream_problems: list[str] = []
        """What the last start-up check found short in the live streams (empty: as declared)."""

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context; raises ConnectionError while not connected."""
        if self.nc is None or not self.nc.is_connected:
            raise ConnectionError("NATS is not connected")
        return self.nc.jetstream()

    async def start(self) -> None:
        """Begin connecting; returns at once (services must start even while NATS is down)."""
        if self._connect_task is None:
            with contextlib.suppress(OSError, ValueError, ssl.SSLError):
                self._tls_context()  # early, so metrics can watch the certificate; the connect loop retries
            self._connect_task = asyncio.create_task(self._connect_loop(), name=f"nats-connect-{self.name}")

    def _tls_context(self) -> ssl.SSLContext | None:
        """The client context to connect with; raises while the TLS files do not load."""
        settings = self.settings
        if settings.tls_ca_file is None:
            return None
        if self.tls is None:

            def build() -> ssl.SSLContext:
                context = settings.tls_context()
                assert context is not None  # a CA file is configured
                return context

            files = CertificateFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
            self.tls = ReloadingSslContext("nats_client", files, build)
        return self.tls.context

    def refresh_tls(self) -> bool:
        """Re-read the TLS files if they changed; the next (re)connect uses them. True when a new context is in use.

        nats-py reads its ``tls`` option on every reconnect, so swapping it is enough. An open connection is not
        dropped for this: the server does not re-check a client certificate it already accepted, and cutting
        a working connection for files that may turn out broken would risk an outage for nothing.
        """
        if self.tls is None:
            return False
        context = self.tls.refresh()
        if context is None:
            return False
        if self.nc is not None:
            self.nc.options["tls"] = context
        return True

    async def _watch_tls(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tls_reload_check_s)
            self.refresh_tls()

    async def wait_connected(self, limit_s: float) -> None:
        """Wait until connected and the stream exists (TimeoutError after ``limit_s``)."""
        await asyncio.wait_for(self.connected.wait(), limit_s)

    async def _connect_loop(self) -> None:
        delay = 0.1
        while self.nc is None:
            try:
                self.nc = await nats.connect(
                    servers=[self.settings.url],
                    name=f"steward-{self.name}",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    error_cb=self._on_error,
                    user_credentials=str(self.settings.credentials_file) if self.settings.credentials_file else None,
                    nkeys_seed=str(self.settings.nkey_seed_file) if self.settings.nkey_seed_file else None,
                    # Replies and JetStream deliveries land under the service's own inbox prefix, the only
                    # inboxes its NATS user may subscribe to (services.chassis.nats_permissions).
                    inbox_prefix=inbox_prefix(self.name),
                    tls=self._tls_context(),
                )
            except Exception as exc:
                log.warning("nats connect failed; retrying", extra={"error_type": type(exc).__name__, "delay_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if self.tls is not None and self._tls_watch_task is None:
            self._tls_watch_task = asyncio.create_task(self._watch_tls(), name=f"nats-tls-{self.name}")
        await self._provision_until_done()

    async def _provision_until_done(self) -> None:
        delay = 0.1
        while True:
            try:
                if self.provision:
                    await self.ensure_stream()
                self.connected.set()
                return
            except Exception as exc:
                log.warning("stream provisioning failed; retrying", extra={"error_type": type(exc).__name__})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def ensure_stream(self) -> None:
        """Create the ``STEWARD`` stream as declared (:mod:`services.chassis.streams`) when it is missing, then
        check the live streams against the declaration.

        Each shortfall is logged; with ``stream_check = "refuse"`` :class:`StreamsBelowDeclared` is raised, so
        the bus stays unconnected (events wait in the outbox, nothing is consumed) and provisioning retries
        until someone runs ``steward nats apply``.
        """
        await ensure_events_stream(self.js, self.settings)
        if self.settings.stream_check == "off":
            return
        self.stream_problems = await check_streams(self.js, self.settings)
        for problem in self.stream_problems:
            log.warning("NATS streams below their declaration: %s", problem)
        if self.stream_problems and self.settings.stream_check == "refuse":
            raise StreamsBelowDeclared(self.stream_problems)

    async def _on_disconnected(self) -> None:
        self.connected.clear()
        log.warning("nats disconnected")
        self.refresh_tls()  # before the first reconnect attempt: renewed files may be why the server left

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        log.info("nats reconnected")
        asyncio.get_running_loop().create_task(self._provision_until_done())

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats client error", extra={"error_type": type(exc).__name__})

    async def close(self) -> None:
        """Drain and close the connection."""
        for task in (self._connect_task, self._tls_watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        self.connected.clear()


class OutboxRelay(BackgroundTask):
    """Publishes committed outbox rows to JetStream, in order, at least once (deduplicated by id).

    The one way a write wakes the relay: :func:`enqueue_many` marks the session, and while the relay
    runs it listens for commits of ``db``'s sessions, so a transaction that staged events wakes it the
    moment it commits (from whichever thread committed). Nobody passes a wake-up callback around; the
    relay also polls every ``outbox_poll_s`` in case a row was written by another process.
    """

    def __init__(self, db: Database, bus: Bus, *, batch: int = 200, keep_published: timedelta = timedelta(hours=6)):
        super().__init__("outbox-relay")
        self.db = db
        self.bus = bus
        self.batch = batch
        self.keep_published = keep_published
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.published = 0

    def wake(self) -> None:
        """Publish now rather than at the next poll (commits of staged events call this by themselves)."""
        self._wake.set()

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_STAGED, False) and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to wake
                self._loop.call_soon_threadsafe(self._wake.set)

    @staticmethod
    def _after_rollback(session: Session) -> None:
        session.info.pop(_STAGED, None)

    async def start(self) -> None:
        """Listen for commits that staged events and run the relay loop in the background."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            orm_events.listen(self.db.sessions, "after_commit", self._after_commit)
            orm_events.listen(self.db.sessions, "after_rollback", self._after_rollback)
        await super().start()

    async def finish(self) -> None:
        """Stop listening, publish what is pending once more (when connected); the rest waits for the next start."""
        if self._loop is not None:
            orm_events.remove(self.db.sessions, "after_commit", self._after_commit)
            orm_events.remove(self.db.sessions, "after_rollback", self._after_rollback)
            self._loop = None
        if self.bus.connected.is_set():
            try:
                await self.drain_once()
            except Exception as exc:
                log.warning("final outbox drain failed; rows stay queued", extra={"error_type": type(exc).__name__})

    def _pending(self, session: Session) -> list[tuple[str, str, bytes, str]]:
        query = (
            select(OutboxEntry.id, OutboxEntry.subject, OutboxEntry.payload, OutboxEntry.headers)
            .where(OutboxEntry.published_at.is_(None))
            .order_by(OutboxEntry.created_at, OutboxEntry.id)
            .limit(self.batch)
        )
        return [tuple(row) for row in session.execute(query)]  # type: ignore[misc]

    def _mark(self, session: Session, ids: Sequence[str]) -> None:
        now = SYSTEM_CLOCK.now()
        session.execute(update(OutboxEntry).where(OutboxEntry.id.in_(ids)).values(published_at=now))
        session.execute(
            delete(OutboxEntry).where(
                OutboxEntry.published_at.is_not(None), OutboxEntry.published_at < now - self.keep_published
            )
        )

    async def drain_once(self) -> int:
        """Publish one batch of pending rows; returns how many were acknowledged."""
        rows = await self.db.run(self._pending)
        if not rows:
            return 0
        done: list[str] = []
        try:
            js = self.bus.js
            for event_id, subject, payload, headers in rows:
                hdrs = json.loads(headers or "{}")
                hdrs["Nats-Msg-Id"] = event_id
                await js.publish(subject, payload, timeout=2.0, stream=self.bus.settings.stream, headers=hdrs)
                done.append(event_id)
        finally:
            if done:
                await self.db.run(lambda s: self._mark(s, done))
                self.published += len(done)
        return len(done)

    async def run(self) -> None:
        """Publish pending rows whenever woken or every ``outbox_poll_s``; back off while NATS fails."""
        failures = 0
        poll = self.bus.settings.outbox_poll_s
        while True:
            try:
                if not self.bus.connected.is_set():
                    await asyncio.wait_for(self.bus.connected.wait(), timeout=5.0)
                # Cleared before reading, so a commit that lands while this batch is read still wakes the next.
                self._wake.clear()
                count = await self.drain_once()
                failures = 0
                if count:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=poll)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(5.0, 0.1 * 2 ** min(failures, 6)) * (0.5 + random.random() / 2)  # noqa: S311
                log.warning(
                    "outbox publish failed; backing off",
                    extra={"error_type": type(exc).__name__, "delay_s": round(delay, 2)},
                )
                await asyncio.sleep(delay)


@dataclass
class ConsumerStats:
    """Counters tests and metrics read."""

    handled: int = 0
    duplicates: int = 0
    failures: int = 0
    dead_lettered: int = 0
    resubscribes: int = 0
    empty_fetches: int = 0


class Consumer(BackgroundTask):
    """A durable pull consumer whose handler runs once per event, inside a database transaction.

    Stopping it stops fetching; unacked messages are redelivered to the next run.
    """

    def __init__(
        self,
        bus: Bus,
        db: Database,
        *,
        durable: str,
        subjects: Sequence[str],
        handler: Handler,
        max_deliveries: int | None = None,
        ack_wait_s: float | None = None,
        batch: int = 50,
        nak_base_delay_s: float = 0.2,
        max_backoff_s: float = 30.0,
        fetch_timeout_s: float = 1.0,
        concurrent: bool = False,
    ) -> None:
        super().__init__(f"consumer-{durable}")
        self.bus = bus
        self.db = db
        self.durable = durable
        self.subjects = list(subjects)
        self.handler = handler
        self.max_deliveries = max_deliveries or bus.settings.max_deliveries
        self.ack_wait_s = ack_wait_s or bus.settings.ack_wait_s
        self.batch = batch
        self.nak_base_delay_s = nak_base_delay_s
        self.max_backoff_s = max_backoff_s
        self.fetch_timeout_s = fetch_timeout_s
        # With group commit (SQLite, or PostgreSQL when the service asks), hand a fetched batch's messages to the
        # writer all at once rather than one after the other: they are queued in order and share one transaction
        # and one commit instead of one each. A failing one makes the writer replay the others with a savepoint
        # each, as for any unit. Otherwise every message has its own transaction and they stay one after the
        # other (order kept).
        self.concurrent = concurrent and db.group_commits
        self.stats = ConsumerStats()

    def _config(self) -> ConsumerConfig:
        config = ConsumerConfig(
            # A name puts the filter into the create subject, which the NATS permissions pin per durable.
            name=self.durable,
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            # Unlimited at the server: this loop decides. A dependency outage must not exhaust the
            # deliveries of every message in flight, only a handler that keeps failing on one message.
            max_deliver=-1,
            max_ack_pending=1000,
        )
        if len(self.subjects) == 1:
            config.filter_subject = self.subjects[0]
        else:
            config.filter_subjects = self.subjects
        return config

    async def _subscribe(self) -> Any:
        await self.bus.wait_connected(3600)
        js = self.bus.js
        stream = self.bus.settings.stream
        try:
            await js.consumer_info(stream, self.durable)
        except NotFoundError:
            await js.add_consumer(stream, self._config())
        return await js.pull_subscribe_bind(durable=self.durable, stream=stream)

    async def run(self) -> None:
        """Fetch and process batches for as long as the task runs, rebinding after reconnects and errors."""
        sub = None
        failures = 0
        seen_reconnects = -1
        while True:
            try:
                # nats.py pull subscriptions can go quiet after a server restart (nats-io/nats.py#504):
                # after every reconnect we bind afresh.
                if sub is None or seen_reconnects != self.bus.reconnects:
                    if sub is not None:
                        self.stats.resubscribes += 1
                        with contextlib.suppress(Exception):
                            await sub.unsubscribe()
                    seen_reconnects = self.bus.reconnects
                    sub = await self._subscribe()
                try:
                    messages = await sub.fetch(self.batch, timeout=self.fetch_timeout_s)
                except TimeoutError:
                    # Nothing arrived: normal when idle, not a fault. nats-py raises its own TimeoutError or a
                    # plain asyncio one (both subclass the built-in) depending on where the wait ran out.
                    self.stats.empty_fetches += 1
                    continue
                failures = 0
                if self.concurrent:
                    await asyncio.gather(*(self._process(msg) for msg in messages))
                else:
                    for msg in messages:
                        await self._process(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(5.0, 0.1 * 2 ** min(failures, 6))
                log.warning(
                    "consumer loop error; resubscribing",
                    extra={"consumer": self.durable, "error_type": type(exc).__name__, "delay_s": delay},
                )
                sub = None
                self.stats.resubscribes += 1
                await asyncio.sleep(delay)

    async def info(self) -> Any:
        """JetStream's view of this consumer (``num_pending``, ``num_ack_pending``, ``num_redelivered``): metrics."""
        return await self.bus.js.consumer_info(self.bus.settings.stream, self.durable)

    def _apply(self, session: Session, event: events_pb2.Event) -> bool:
        seen = session.get(InboxEntry, (self.durable, event.id))
        if seen is not None:
            return False
        session.add(InboxEntry(consumer=self.durable, event_id=event.id))
        session.flush()
        self.handler(session, event)
        return True

    async def _process(self, msg: Msg) -> None:
        event = events_pb2.Event()
        try:
            event.ParseFromString(msg.data)
            if not event.id:
                raise DecodeError("event without id")
        except DecodeError:
            log.error("undecodable event; dead-lettering", extra={"consumer": self.durable, "subject": msg.subject})
            await self._dead_letter(msg, "DecodeError", event_id="")
            return
        parent = extract_context(msg.headers)
        with tracer.start_as_current_span(
            f"process {msg.subject}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": msg.subject,
                "messaging.message.id": event.id,
                "steward.consumer": self.durable,
            },
        ):
            try:
                applied = await self.db.run(lambda s: self._apply(s, event))
            except IntegrityError:
                applied = False  # a concurrent replica applied it first: the inbox row won the race
            except Exception as exc:
                await self._failed(msg, event, exc)
                return
        if applied:
            self.stats.handled += 1
        else:
            self.stats.duplicates += 1
        await msg.ack()

    async def _failed(self, msg: Msg, event: events_pb2.Event, exc: Exception) -> None:
        self.stats.failures += 1
        delivered = msg.metadata.num_delivered or 1
        transient = is_transient(exc)
        log.warning(
            "event handler failed",
            extra={
                "consumer": self.durable,
                "event_id": event.id,
                "delivery": delivered,
                "error_type": type(exc).__name__,
                "transient": transient,
            },
        )
        if isinstance(exc, RefusedEvent):
            await self._dead_letter(msg, type(exc).__name__, event_id=event.id, reason=exc.reason)
            return
        if transient:
            # A dependency is down (Transit, database): wait for it, however long, rather than dead-letter.
            await msg.nak(delay=min(self.max_backoff_s, self.nak_base_delay_s * 2 ** min(delivered - 1, 16)))
            return
        if delivered >= self.max_deliveries:
            await self._dead_letter(msg, type(exc).__name__, event_id=event.id)
            return
        await msg.nak(delay=self.nak_base_delay_s * 2 ** (delivered - 1))

    async def _dead_letter(self, msg: Msg, error_type: str, *, event_id: str, reason: str = "") -> None:
        headers = {
            "Steward-Original-Subject": msg.subject,
            "Steward-Consumer": self.durable,
            "Steward-Error-Type": error_type,
        }
        if reason:
            headers["Steward-Reason"] = reason
        if event_id:
            headers["Nats-Msg-Id"] = f"dlq:{self.durable}:{event_id}"
        await self.bus.js.publish(
            f"{DLQ_PREFIX}{self.durable}", msg.data, timeout=2.0, stream=self.bus.settings.stream, headers=headers
        )
        await msg.term()
        self.stats.dead_lettered += 1
