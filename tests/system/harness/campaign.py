"""One campaign against one running stack: load, faults one at a time with accounting after each, soak, fuzz.

The quick variant (``make test``) and the full one (``make soak``) run this same code with different
:class:`Sizes`; :func:`violations` turns a result into the list of broken promises (empty = pass).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from services.client import RetryPolicy
from tests.plugins.waiting import eventually
from tests.system.harness.accounting import (
    Accounting,
    count_record_events,
    outbox_backlog,
    patient_client,
    read_back,
    reconcile,
    stuck,
)
from tests.system.harness.canary import CanaryScan, scan_for_canaries
from tests.system.harness.faults import Fault, faults_for
from tests.system.harness.fuzz import FORBIDDEN, FuzzResult, fuzz_stack
from tests.system.harness.http_fuzz import HttpFuzzResult, fuzz_notify_http
from tests.system.harness.load import AttemptCounter, Flow, Ledger, Load, flows, new_record
from tests.system.harness.privacy import (
    DsrFlow,
    ExportFlow,
    NoticeFlow,
    PrivacyLedger,
    account_privacy,
    consent_snapshot,
    dsr_policy,
    half_written,
)
from tests.system.harness.stack import SystemStack

__all__ = ["CampaignResult", "FaultOutcome", "Sizes", "account", "run_campaign", "violations"]

Progress = Callable[[str], None]


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class Sizes:
    """How big a campaign is. :meth:`full` reads ``SOAK_*`` environment variables (``make soak``)."""

    writers: int = 3
    readers: int = 1
    warmup_acks: int = 15
    after_acks: int = 10
    write_timeout_s: float = 3.0
    retry_budget_s: float = 8.0
    freeze_s: float = 5.0
    seal_s: float = 3.0
    soak_s: float = 0.0
    fuzz_examples: int = 4
    fuzz_huge: bool = False
    dsr_workers: int = 1
    notice_workers: int = 1
    export_phases: tuple[str, ...] | None = ("kill -9 vault",)
    fault_names: tuple[str, ...] | None = ("kill -9 vault", "kill -9 nats")

    @classmethod
    def full(cls) -> Sizes:
        """The ``make soak`` sizes: every fault, a real soak, a bigger fuzz; each overridable by ``SOAK_*``."""
        return cls(
            writers=_env_int("SOAK_WRITERS", 6),
            readers=_env_int("SOAK_READERS", 2),
            warmup_acks=_env_int("SOAK_WARMUP_ACKS", 60),
            after_acks=_env_int("SOAK_AFTER_ACKS", 40),
            write_timeout_s=_env_float("SOAK_WRITE_TIMEOUT_S", 3.0),
            retry_budget_s=_env_float("SOAK_RETRY_BUDGET_S", 8.0),
            freeze_s=_env_float("SOAK_FREEZE_S", 6.0),
            seal_s=_env_float("SOAK_SEAL_S", 4.0),
            soak_s=_env_float("SOAK_SECONDS", 60.0),
            fuzz_examples=_env_int("SOAK_FUZZ_EXAMPLES", 25),
            fuzz_huge=os.environ.get("SOAK_FUZZ_HUGE", "1") == "1",
            dsr_workers=_env_int("SOAK_DSR_WORKERS", 2),
            notice_workers=_env_int("SOAK_NOTICE_WORKERS", 2),
            export_phases=None if os.environ.get("SOAK_EXPORTS", "1") == "1" else (),
            fault_names=None,
        )

    def faults(self, database: str) -> list[Fault]:
        """The faults this campaign injects on ``database``, in order."""
        chosen = [
            fault
            for fault in faults_for(freeze_s=self.freeze_s, seal_s=self.seal_s)
            if database == "postgresql" or not fault.postgres_only
        ]
        if self.fault_names is not None:
            chosen = [fault for fault in chosen if fault.name in self.fault_names]
        return chosen


@dataclass
class FaultOutcome:
    """What one phase (a fault, the baseline or the soak) did and what accounting found after it."""

    name: str
    attempted: int = 0
    acknowledged: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)
    recovery_s: float | None = None
    accounting: Accounting = field(default_factory=Accounting)
    duration_s: float = 0.0


@dataclass
class CampaignResult:
    """Everything a campaign measured on one database."""

    database: str
    phases: list[FaultOutcome] = field(default_factory=list)
    final: Accounting = field(default_factory=Accounting)
    fuzz: FuzzResult = field(default_factory=FuzzResult)
    http_fuzz: HttpFuzzResult = field(default_factory=HttpFuzzResult)
    half_written: dict[str, str] = field(default_factory=dict)
    rss_soak: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    rss_fuzz: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    pids_before_fuzz: dict[str, int] = field(default_factory=dict)
    pids_after_fuzz: dict[str, int] = field(default_factory=dict)
    alive_after_fuzz: bool = False
    lost_reads: int = 0
    corrupt_reads: int = 0
    total_records: int = 0
    event_messages: int = 0
    ledger: Ledger | None = None
    privacy: PrivacyLedger | None = None
    canary: CanaryScan | None = None
    duration_s: float = 0.0

    @property
    def faults(self) -> list[FaultOutcome]:
        """The phases that were faults (not baseline or soak)."""
        return [phase for phase in self.phases if phase.name not in ("baseline", "soak")]


async def account(
    stack: SystemStack,
    ledger: Ledger,
    phase: str | None,
    privacy: PrivacyLedger | None = None,
    *,
    settle_s: float = 90,
) -> Accounting:
    """Reconcile unsettled writes, read back the acks of ``phase`` (None: every ack), check outbox, events, consumers;
    with ``privacy``, also every request, delivery and export of the phase (:func:`account_privacy`).

    Reconciliation comes first, so writes that committed although their caller saw a failure are read back too.
    """
    result = Accounting()
    async with patient_client(stack) as client:
        await reconcile(client, ledger, result)
        chosen = [ack for ack in ledger.acks.values() if phase is None or ack.phase == phase]
        await read_back(client, chosen, result)
        if privacy is not None:
            result.privacy = await account_privacy(stack, client, privacy, phase, settle_s=settle_s)

    backlog: dict[str, int] = {}

    def drained() -> bool:
        backlog.update(outbox_backlog(stack))
        return not any(backlog.values())

    await _settle(drained, settle_s, "outbox drained")
    result.outbox_unpublished = {name: count for name, count in backlog.items() if count}

    tally_box = []

    async def events_complete() -> bool:
        tally = await count_record_events(stack)
        tally_box[:] = [tally]
        return not tally.missing(ledger.acks)

    await _settle(events_complete, settle_s, "every acknowledged record announced on the stream")
    tally = tally_box[-1]
    result.missing_events = tally.missing(ledger.acks)
    result.duplicated_events = tally.duplicated()

    pending: dict[str, tuple[int, int]] = {}

    async def consumers_settled() -> bool:
        pending.clear()
        pending.update(await stuck(stack))
        return not pending

    await _settle(consumers_settled, settle_s, "durable consumers settled")
    result.stuck_consumers = dict(pending)
    return result


async def _settle(predicate: Callable[[], object], timeout_s: float, what: str) -> bool:
    """:func:`eventually`, but a condition that never comes is a finding to report, not an exception."""
    try:
        await eventually(predicate, timeout_s, what=what)
    except AssertionError:
        return False
    return True


async def _run_phase(
    stack: SystemStack,
    load: Load,
    ledger: Ledger,
    privacy: PrivacyLedger,
    sizes: Sizes,
    fault: Fault | None,
    progress: Progress,
) -> FaultOutcome:
    name = fault.name if fault else "baseline"
    ledger.phase = name
    outcome = FaultOutcome(name)
    began = time.monotonic()
    load.start()
    try:
        await eventually(lambda: ledger.acknowledged[name] >= sizes.warmup_acks, 180, what=f"{name}: warm-up writes")
        if fault is not None:
            progress(f"{stack.database}: injecting {name}")
            memo = await fault.inject(stack)
            await fault.end(stack, memo)
            ended = time.monotonic()
            await _settle(lambda: ledger.first_ack_after(ended) is not None, 180, f"{name}: first write after")
            first = ledger.first_ack_after(ended)
            outcome.recovery_s = None if first is None else first - ended
            target = ledger.acknowledged[name] + sizes.after_acks
            await _settle(lambda: ledger.acknowledged[name] >= target, 180, f"{name}: writes after recovery")
    finally:
        await load.stop()
    outcome.attempted, outcome.acknowledged = ledger.attempted[name], ledger.acknowledged[name]
    outcome.statuses = Counter(ledger.statuses[name])
    outcome.attempts = Counter(ledger.attempts[name])
    loaded = time.monotonic()
    outcome.accounting = await account(stack, ledger, name, privacy)
    outcome.duration_s = time.monotonic() - began
    progress(
        f"{stack.database}: {name} done in {outcome.duration_s:.0f} s (accounting {time.monotonic() - loaded:.0f} s): "
        f"{_summary(outcome)}"
    )
    return outcome


def _summary(outcome: FaultOutcome) -> str:
    acc = outcome.accounting
    return (
        f"acked {outcome.acknowledged}/{outcome.attempted}, recovery {outcome.recovery_s}, lost {len(acc.lost)}, "
        f"corrupted {len(acc.corrupted)}, dup events {len(acc.duplicated_events)}, "
        f"committed-but-failed {acc.committed_but_failed}; DSRs {acc.privacy.requests_checked} "
        f"{dict(acc.privacy.states)}, deliveries {acc.privacy.deliveries_checked} {dict(acc.privacy.delivery_states)}, "
        f"privacy problems {[label for label, _ in acc.privacy.problems()]}"
    )


async def run_campaign(stack: SystemStack, sizes: Sizes, progress: Progress = lambda _line: None) -> CampaignResult:
    """Baseline, each fault with accounting, the soak, final accounting over every write, then the fuzz."""
    began = time.monotonic()
    result = CampaignResult(stack.database)
    ledger = Ledger(run=uuid.uuid4().hex[:8])
    privacy = PrivacyLedger(run=ledger.run)
    result.ledger, result.privacy = ledger, privacy
    retry = RetryPolicy(max_attempts=5, budget_s=sizes.retry_budget_s)
    counter = AttemptCounter(ledger)
    async with stack.client(timeout_s=sizes.write_timeout_s, retry=retry, interceptors=[counter]) as client:
        load = Load(
            client,
            ledger,
            [*flows(writers=sizes.writers, readers=sizes.readers), *_privacy_flows(stack, privacy, sizes)],
        )
        result.phases.append(await _run_phase(stack, load, ledger, privacy, sizes, None, progress))
        for fault in sizes.faults(stack.database):
            result.phases.append(await _run_phase(stack, load, ledger, privacy, sizes, fault, progress))
        if sizes.soak_s > 0:
            result.phases.append(await _soak(stack, load, ledger, privacy, sizes, result, progress))
    result.final = await account(stack, ledger, None, privacy)
    result.canary = await scan_for_canaries(stack, privacy.canaries)
    result.lost_reads, result.corrupt_reads = len(ledger.lost_reads), len(ledger.corrupt_reads)
    result.total_records = len(ledger.acks)
    result.event_messages = (await count_record_events(stack)).messages
    progress(f"{stack.database}: final accounting over {result.total_records} records: clean={result.final.clean}")

    result.pids_before_fuzz = stack.pids()
    before = stack.rss()
    policy = await dsr_policy(stack)
    result.fuzz = await fuzz_stack(stack, examples=sizes.fuzz_examples, huge=sizes.fuzz_huge, progress=progress)
    result.http_fuzz = await fuzz_notify_http(
        stack, lambda: consent_snapshot(stack, privacy), examples=sizes.fuzz_examples
    )
    progress(f"http fuzz of notify: {result.http_fuzz.total} requests, {dict(result.http_fuzz.statuses)}")
    result.half_written = await half_written(stack, privacy)
    await dsr_policy(stack, policy)  # a fuzzed SetPolicy may be valid: later users of the stack get the old one back
    result.pids_after_fuzz = stack.pids()
    result.rss_fuzz = _rss_pairs(before, stack.rss())
    result.alive_after_fuzz = await _still_serves(stack, ledger)
    result.duration_s = time.monotonic() - began
    return result


def _privacy_flows(stack: SystemStack, privacy: PrivacyLedger, sizes: Sizes) -> list[Flow]:
    """The dsr, notify and tenant-export flows at the campaign's sizes."""
    chosen: list[Flow] = [
        DsrFlow(privacy, workers=sizes.dsr_workers),
        NoticeFlow(privacy, workers=sizes.notice_workers),
    ]
    if sizes.export_phases != ():
        chosen.append(ExportFlow(stack, privacy, phases=sizes.export_phases))
    return [flow for flow in chosen if flow.workers > 0]


async def _soak(
    stack: SystemStack,
    load: Load,
    ledger: Ledger,
    privacy: PrivacyLedger,
    sizes: Sizes,
    result: CampaignResult,
    progress: Progress,
) -> FaultOutcome:
    """The load for ``soak_s`` seconds with no fault; RSS of every process before and after."""
    ledger.phase = "soak"
    outcome = FaultOutcome("soak")
    before = stack.rss()
    began = time.monotonic()
    load.start()
    try:
        await asyncio.sleep(sizes.soak_s)  # the soak's length is the point: a bounded run, not a wait
    finally:
        await load.stop()
    result.rss_soak = _rss_pairs(before, stack.rss())
    outcome.attempted, outcome.acknowledged = ledger.attempted["soak"], ledger.acknowledged["soak"]
    outcome.statuses = Counter(ledger.statuses["soak"])
    outcome.attempts = Counter(ledger.attempts["soak"])
    outcome.accounting = await account(stack, ledger, "soak", privacy)
    outcome.duration_s = time.monotonic() - began
    progress(f"{stack.database}: soak done: {_summary(outcome)}")
    return outcome


def _rss_pairs(
    before: dict[str, tuple[int, int | None]], after: dict[str, tuple[int, int | None]]
) -> dict[str, tuple[int | None, int | None]]:
    """``{name: (KiB before, KiB after)}``; a side is None when the process was not the same one (restarted)."""
    pairs: dict[str, tuple[int | None, int | None]] = {}
    for name in sorted(set(before) | set(after)):
        pid_before, rss_before = before.get(name, (None, None))
        pid_after, rss_after = after.get(name, (None, None))
        pairs[name] = (rss_before, rss_after if pid_after == pid_before else None)
    return pairs


async def _still_serves(stack: SystemStack, ledger: Ledger) -> bool:
    """One write and its read-back after the fuzz: the stack is still usable, not only alive."""
    record = new_record(ledger, random.Random(0))
    async with patient_client(stack) as client:
        stored = await client.put_record(record)
        back = await client.get_record(stored.id)
    return back.data == record.data


def violations(result: CampaignResult) -> list[str]:
    """Every broken promise in ``result`` (empty when the campaign passed)."""
    found: list[str] = []
    accountings: Sequence[tuple[str, Accounting]] = [(p.name, p.accounting) for p in result.phases]
    for name, acc in [*accountings, ("final", result.final)]:
        for label, items in (
            ("lost", acc.lost),
            ("corrupted", acc.corrupted),
            ("unreadable", acc.unreadable),
            ("events missing", acc.missing_events),
            ("events duplicated", acc.duplicated_events),
            ("duplicated by a keyed retry", acc.duplicated_by_retry),
            ("unreconciled writes", acc.unreconciled),
            ("stuck consumers", acc.stuck_consumers),
        ):
            if items:
                found.append(f"{result.database} {name}: {label}: {len(items)} {_sample(items)}")
        if any(acc.outbox_unpublished.values()):
            found.append(f"{result.database} {name}: outbox not drained: {acc.outbox_unpublished}")
        for label, privacy_items in acc.privacy.problems():
            found.append(f"{result.database} {name}: {label}: {len(privacy_items)} {_sample(privacy_items)}")  # type: ignore[arg-type]
    for phase in result.faults:
        if phase.recovery_s is None:
            found.append(f"{result.database} {phase.name}: no write succeeded after the fault ended")
    if result.lost_reads or result.corrupt_reads:
        found.append(f"{result.database}: reads during load: {result.lost_reads} lost, {result.corrupt_reads} corrupt")
    for phase in result.phases:
        bad = {key: n for key, n in (phase.statuses + phase.attempts).items() if key.rsplit(":", 1)[-1] in FORBIDDEN}
        if bad:
            found.append(f"{result.database} {phase.name}: the load was answered {bad}")
    for status in FORBIDDEN:
        if result.fuzz.count(status):
            found.append(f"{result.database}: fuzz answered {status} {result.fuzz.count(status)} times")
    if result.pids_before_fuzz != result.pids_after_fuzz:
        found.append(
            f"{result.database}: processes changed during the fuzz: {result.pids_before_fuzz} -> "
            f"{result.pids_after_fuzz}"
        )
    for method, counter in result.fuzz.without_reason.items():
        found.append(f"{result.database}: fuzz refusals of {method} without a reason: {dict(counter)}")
    http = result.http_fuzz
    if http.broken:
        found.append(
            f"{result.database}: notify HTTP fuzz: {len(http.broken)} answers broke a rule, e.g. {http.broken[:2]}"
        )
    if http.consent_changed:
        found.append(f"{result.database}: notify HTTP fuzz changed consent of {len(http.consent_changed)} subjects")
    if result.half_written:
        found.append(f"{result.database}: requests left half-written after the fuzz: {_sample(result.half_written)}")
    if result.canary is not None:
        for place, hits in result.canary.found.items():
            found.append(f"{result.database}: plaintext canaries in {place}: {len(hits)} e.g. {hits[:2]}")
        if not result.canary.control_seen:
            found.append(f"{result.database}: the canary scan did not even see the tenant id: it looked at nothing")
    if not result.alive_after_fuzz:
        found.append(f"{result.database}: the stack did not serve a write after the fuzz")
    return found


def _sample(items: object) -> str:
    values = list(items)[:3] if not isinstance(items, dict) else list(items.items())[:3]  # type: ignore[call-overload]
    return f"e.g. {values}"
