"""Mixed load through the gateway, and the ledger that remembers every write the stack acknowledged.

A writer stores records with known payloads — each write a new data subject with its own ``external_id``,
so a duplicate is visible as a second record of that subject — through :class:`StewardClient` (fresh
idempotency key per write, reason-aware retries). An acknowledged write goes into the ledger as
``record id -> (subject, kind, payload digest)``; a write that failed after its retries goes into
``unsettled`` with its idempotency key and request, to be reconciled once the fault is over. Readers
read acknowledged records back while the load runs and compare digests.

Extension point: :data:`FLOWS` lists the record flows; the campaign adds the dsr, notify and tenant-export flows
of :mod:`tests.system.harness.privacy` next to them — a flow is an object with ``name``, ``workers`` and
``async step(load)``, recording its outcomes with :meth:`Ledger.outcome`.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct
from grpc import aio
from steward.vault.v1 import vault_pb2 as pb

from services.client import StewardClient

__all__ = [
    "FLOWS",
    "Ack",
    "Flow",
    "Ledger",
    "Load",
    "ReadFlow",
    "Unsettled",
    "WriteFlow",
    "digest",
    "marker_of",
    "new_record",
]

KINDS = (
    pb.RECORD_KIND_LEAD_CONTACT,
    pb.RECORD_KIND_INTERACTION,
    pb.RECORD_KIND_OPPORTUNITY,
    pb.RECORD_KIND_NOTE,
    pb.RECORD_KIND_CUSTOM,
)
_WORDS = ("lead", "call", "Zürich", "deal", "renewal", "☎", "follow-up", "née", "quote", "東京", "demo", "churn")


def digest(data: Struct) -> str:
    """SHA-256 of a record's data in canonical JSON (what is compared on read-back)."""
    return hashlib.sha256(json.dumps(MessageToDict(data), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Ack:
    """One acknowledged record: where it is and what it must hold."""

    record_id: str
    subject_id: str
    marker: str
    kind: int
    digest: str
    phase: str

    def matches(self, record: pb.Record) -> bool:
        """True when ``record`` is what was acknowledged: same subject, kind and payload."""
        return digest(record.data) == self.digest and record.kind == self.kind and record.subject_id == self.subject_id


@dataclass
class Unsettled:
    """A write the client saw fail: it may or may not have committed. Reconciled with its idempotency key."""

    key: str
    records: list[pb.NewRecord]
    phase: str
    status: str


@dataclass
class Ledger:
    """Everything the load did, per phase (a fault's name, ``soak``, ...)."""

    run: str
    phase: str = "warmup"
    acks: dict[str, Ack] = field(default_factory=dict)
    unsettled: list[Unsettled] = field(default_factory=list)
    attempted: Counter[str] = field(default_factory=Counter)
    acknowledged: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    attempts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    corrupt_reads: list[str] = field(default_factory=list)
    lost_reads: list[str] = field(default_factory=list)
    ack_times: list[float] = field(default_factory=list)
    recent_leads: list[str] = field(default_factory=list)
    sequence: int = 0

    def first_ack_after(self, moment: float) -> float | None:
        """When the first write acknowledged at or after ``moment`` (monotonic clock) came back, if one has."""
        index = bisect.bisect_left(self.ack_times, moment)  # appended in time order by one event loop
        return self.ack_times[index] if index < len(self.ack_times) else None

    def outcome(self, flow: str, code: str) -> None:
        """Count one finished operation of ``flow`` with its final status (``OK`` or a gRPC code name)."""
        self.statuses[self.phase][f"{flow}:{code}"] += 1

    def next_external_id(self) -> str:
        """A subject identifier no other write of this run uses."""
        self.sequence += 1
        return f"sys-{self.run}-{self.sequence}"

    def remember(self, stored: Sequence[pb.Record], sent: Sequence[pb.NewRecord], phase: str) -> None:
        """Record acknowledged writes (``stored[i]`` answers ``sent[i]``)."""
        for record, new in zip(stored, sent, strict=True):
            self.acks[record.id] = Ack(
                record_id=record.id,
                subject_id=record.subject_id,
                marker=marker_of(new),
                kind=new.kind,
                digest=digest(new.data),
                phase=phase,
            )
            if new.kind == pb.RECORD_KIND_LEAD_CONTACT:
                # Later notes attach to recent leads, so subjects get a few records each, not hundreds.
                self.recent_leads = [*self.recent_leads[-49:], record.subject_id]


class AttemptCounter(aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the status of every attempt (retries included) per phase, as ``Method:STATUS``.

    The flows record each operation's final outcome; this shows what the retries absorbed.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Pass the call on and count its status once it finished."""
        call = await continuation(client_call_details, request)
        code = await call.code()
        method = client_call_details.method
        method = method.decode() if isinstance(method, bytes) else str(method)
        self.ledger.attempts[self.ledger.phase][f"{method.rsplit('/', 1)[-1]}:{code.name}"] += 1
        return call


def new_record(ledger: Ledger, rng: random.Random) -> pb.NewRecord:
    """A record with a payload of known content and a unique ``marker``.

    A lead contact opens a new subject (its ``external_id`` is unique to this write); other kinds are
    attached to a subject an earlier acknowledged lead opened, as the vault requires.
    """
    external_id = ledger.next_external_id()
    leads = ledger.recent_leads
    if leads and rng.random() < 0.4:
        record = pb.NewRecord(kind=rng.choice(KINDS[1:]), subject_id=rng.choice(leads))
    else:
        record = pb.NewRecord(
            kind=pb.RECORD_KIND_LEAD_CONTACT, identifiers=pb.SubjectIdentifiers(external_id=external_id)
        )
    words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 60))]
    record.data.update(
        {
            "marker": external_id,
            "seq": ledger.sequence,
            "note": " ".join(words),
            "stage": rng.choice(["new", "qualified", "won", "lost"]),
            "tags": words[:5],
            "nested": {"depth": {"of": {"record": ledger.sequence % 97}}},
            "amount": rng.randint(0, 10**6) / 100,
        }
    )
    return record


def marker_of(record: pb.NewRecord | pb.Record) -> str:
    """The unique marker a load record carries in its data."""
    value = record.data.fields.get("marker")
    return value.string_value if value is not None else ""


def status_name(exc: BaseException) -> str:
    """``OK``-style name of a gRPC failure (``UNAVAILABLE``, ...), or the exception type for anything else."""
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        return str(exc.code().name)
    return type(exc).__name__


async def store(client: StewardClient, records: Sequence[pb.NewRecord], key: str) -> list[pb.Record]:
    """PutRecord for one record, PutRecords for more, under idempotency key ``key``."""
    if len(records) == 1:
        return [await client.put_record(records[0], idempotency_key=key)]
    return await client.put_records(records, idempotency_key=key)


class Flow(Protocol):
    """One kind of operation the load runs, ``workers`` loops of ``step`` in parallel."""

    name: str
    workers: int

    async def step(self, load: Load) -> None:
        """Do one operation and record its outcome."""


@dataclass
class WriteFlow:
    """PutRecord (and every fifth time a PutRecords of three) for new subjects, with known payloads."""

    workers: int = 4
    name: str = "write"

    async def step(self, load: Load) -> None:
        """One write; acknowledged -> ledger, failed -> unsettled (reconciled later with its key)."""
        ledger, rng = load.ledger, load.rng
        batch = [new_record(ledger, rng) for _ in range(3 if rng.random() < 0.2 else 1)]
        key = f"{ledger.run}-w{ledger.sequence}"
        phase = ledger.phase
        ledger.attempted[phase] += 1
        try:
            stored = await store(load.client, batch, key)
        except (TimeoutError, grpc.RpcError) as exc:
            ledger.outcome(self.name, status_name(exc))
            ledger.unsettled.append(Unsettled(key=key, records=batch, phase=phase, status=status_name(exc)))
            return
        ledger.acknowledged[phase] += 1
        ledger.ack_times.append(time.monotonic())
        ledger.remember(stored, batch, phase)
        ledger.outcome(self.name, "OK")


@dataclass
class ReadFlow:
    """GetRecord of a random acknowledged record, compared with the ledger; sometimes a ListRecords page."""

    workers: int = 2
    name: str = "read"

    async def step(self, load: Load) -> None:
        """One read; a mismatch is a corrupt read, NOT_FOUND of an acknowledged record a lost read."""
        ledger, rng = load.ledger, load.rng
        if not ledger.acks:
            await asyncio.sleep(0.05)
            return
        ack = ledger.acks[rng.choice(list(ledger.acks))]
        try:
            if rng.random() < 0.2:
                page = await load.client.list_records(subject_id=ack.subject_id, page_size=10)
                found = [record for record in page.records if record.id == ack.record_id]
                record = found[0] if found else None
            else:
                record = await load.client.get_record(ack.record_id)
        except (TimeoutError, grpc.RpcError) as exc:
            name = status_name(exc)
            if name == "NOT_FOUND":
                ledger.lost_reads.append(ack.record_id)
            ledger.outcome(self.name, name)
            return
        if record is None:
            ledger.lost_reads.append(ack.record_id)
            ledger.outcome(self.name, "MISSING_FROM_PAGE")
        elif not ack.matches(record):
            ledger.corrupt_reads.append(ack.record_id)
            ledger.outcome(self.name, "CORRUPT")
        else:
            ledger.outcome(self.name, "OK")


def flows(*, writers: int, readers: int) -> list[Flow]:
    """The record flows of the load (the campaign adds the privacy flows of :mod:`tests.system.harness.privacy`)."""
    return [WriteFlow(workers=writers), ReadFlow(workers=readers)]


FLOWS = flows
"""The extension point's name, for readers looking for it."""


@dataclass
class Load:
    """The running load: ``flows`` each with its workers, until :meth:`stop`."""

    client: StewardClient
    ledger: Ledger
    flows: Sequence[Flow]
    rng: random.Random = field(default_factory=random.Random)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        """Start every worker of every flow."""
        self._stop.clear()
        for flow in self.flows:
            for index in range(flow.workers):
                self._tasks.append(asyncio.create_task(self._loop(flow), name=f"{flow.name}-{index}"))

    async def _loop(self, flow: Flow) -> None:
        while not self._stop.is_set():
            await flow.step(self)

    async def stop(self) -> None:
        """Let each worker finish its current operation, then return."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        self._tasks.clear()
