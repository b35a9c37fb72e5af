"""The one text report of a soak: per database, faults and their statuses, the accounting, the fuzz table, RSS."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from tests.system.harness.campaign import CampaignResult, violations

__all__ = ["render"]


def _kib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f} MiB"


def _growth(before: int | None, after: int | None) -> str:
    if before is None or after is None:
        return "restarted" if before is not None else "-"
    return f"{(after - before) / 1024:+.1f} MiB ({(after - before) / before * 100:+.0f}%)"


def _statuses(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counter.items())) or "-"


def _privacy_line(result: CampaignResult) -> str:
    """The dsr / notify / export / canary figures of the final accounting."""
    acc = result.final.privacy
    privacy = result.privacy
    canary = result.canary
    exports = (
        "-"
        if privacy is None
        else f"{len(privacy.exports)} ({sum(p == ['ok'] for p in privacy.exports.values())} verified)"
    )
    scan = (
        "-"
        if canary is None
        else f"{canary.needles} canaries in {len(canary.places)} places ({canary.messages} stream messages): "
        f"found {sum(len(v) for v in canary.found.values())}"
    )
    return (
        f"DSRs acknowledged {acc.requests_checked}: {_statuses(acc.states)}; never terminal {len(acc.not_terminal)}, "
        f"terminal twice {len(acc.terminal_twice)}, evidence failing {len(acc.evidence_invalid)}, stored twice "
        f"{len(acc.requests_duplicated)}, erased but readable {len(acc.erased_still_there)}\n"
        f"deliveries acknowledged {acc.deliveries_checked}: {_statuses(acc.delivery_states)}; never final "
        f"{len(acc.not_final)}, wrong status {len(acc.wrong_status)}, stored twice {len(acc.deliveries_duplicated)}, "
        f"mail missing {len(acc.mail_missing)} / duplicated {len(acc.mail_duplicated)} / unwanted "
        f"{len(acc.mail_unwanted)}\n"
        f"tenant exports {exports}; plaintext scan: {scan}"
    )


def render(results: list[CampaignResult], *, sizes: str) -> str:
    """The report for every database the soak ran on; ends with PASS or the list of violations."""
    lines = [f"Steward soak report — {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}", f"sizes: {sizes}", ""]
    problems: list[str] = []
    for result in results:
        final = result.final
        faults = result.faults
        attempted = sum(phase.attempted for phase in result.phases)
        acked = sum(phase.acknowledged for phase in result.phases)
        duplicated = len(final.duplicated_events) + sum(len(p.accounting.duplicated_by_retry) for p in result.phases)
        committed_failed = sum(p.accounting.committed_but_failed for p in result.phases) + final.committed_but_failed
        never = sum(p.accounting.never_committed for p in result.phases) + final.never_committed
        lines += [
            f"== {result.database} ({result.duration_s:.0f} s) ==",
            f"faults injected: {len(faults)} ({', '.join(phase.name for phase in faults)})",
            f"write operations attempted {attempted}, acknowledged {acked}; records stored {result.total_records}; "
            f"RecordChanged messages on the stream {result.event_messages}",
            f"lost = {len(final.lost)}, duplicated = {duplicated}, corrupted = {len(final.corrupted)} "
            f"(read back {final.checked}); events missing = {len(final.missing_events)}, "
            f"events duplicated = {len(final.duplicated_events)}; unreadable = {len(final.unreadable)}",
            f"writes reported failed: {committed_failed + never} — committed anyway {committed_failed}, "
            f"not committed {never}; all reconciled by idempotency key, none stored twice"
            if not any(p.accounting.duplicated_by_retry or p.accounting.unreconciled for p in result.phases)
            else "writes reported failed: RECONCILIATION FOUND PROBLEMS (see violations)",
            _privacy_line(result),
            f"outbox unpublished at the end: {final.outbox_unpublished or 0}; stuck consumers: "
            f"{final.stuck_consumers or 'none'}; reads during load: {result.lost_reads} lost, "
            f"{result.corrupt_reads} corrupt",
            "",
            f"{'phase':<24} {'attempted':>9} {'acked':>6} {'recovery':>9}  final status per operation (flow:status n)",
        ]
        for phase in result.phases:
            recovery = "-" if phase.recovery_s is None else f"{phase.recovery_s:.2f}s"
            acc = phase.accounting
            counts = f"{phase.attempted:>9} {phase.acknowledged:>6} {recovery:>9}"
            lines.append(f"{phase.name:<24} {counts}  {_statuses(phase.statuses)}")
            lines.append(f"{'':<24} every attempt (retries included): {_statuses(phase.attempts)}")
            lines.append(
                f"{'':<24} after: lost {len(acc.lost)}, corrupted {len(acc.corrupted)}, events missing "
                f"{len(acc.missing_events)}/duplicated {len(acc.duplicated_events)}, outbox "
                f"{sum(acc.outbox_unpublished.values())}, stuck {len(acc.stuck_consumers)}, reconciled "
                f"{acc.reconciled} (committed-but-failed {acc.committed_but_failed}); {phase.duration_s:.0f} s"
            )
            lines.append(
                f"{'':<24} DSRs {acc.privacy.requests_checked} {_statuses(acc.privacy.states)}; deliveries "
                f"{acc.privacy.deliveries_checked} {_statuses(acc.privacy.delivery_states)}; replayed by key "
                f"{acc.privacy.reconciled}; problems {[label for label, _ in acc.privacy.problems()] or 'none'}"
            )
        fuzz = result.fuzz
        lines += [
            "",
            f"fuzz: {fuzz.total} requests; UNKNOWN = {fuzz.count('UNKNOWN')}, "
            f"INTERNAL = {fuzz.count('INTERNAL')}; pids unchanged: "
            f"{result.pids_before_fuzz == result.pids_after_fuzz}; serves after: {result.alive_after_fuzz}",
        ]
        for method, counter in fuzz.statuses.items():
            lines.append(f"  {method.rsplit('.', 1)[-1]:<40} {sum(counter.values()):>5}  {_statuses(counter)}")
        for method, family, answer, body in fuzz.forbidden[:10]:
            lines.append(f"  FORBIDDEN {method} ({family}): {answer[:300]!r} body[:200]={body.hex()}")
        without = sum(sum(counter.values()) for counter in fuzz.without_reason.values())
        lines.append(f"  refusals without a machine-readable reason: {without} {dict(fuzz.without_reason) or ''}")
        http = result.http_fuzz
        lines.append(
            f"notify HTTP fuzz: {http.total} requests; 5xx or unexplained refusals {len(http.broken)}; consent "
            f"changed for {len(http.consent_changed)} subjects; requests half-written after the fuzz "
            f"{len(result.half_written)}"
        )
        for family, statuses in sorted(http.statuses.items()):
            by_code = Counter({str(code): n for code, n in statuses.items()})
            lines.append(f"  {family:<40} {sum(statuses.values()):>5}  {_statuses(by_code)}")
        for family, status, answer, body in http.broken[:10]:
            lines.append(f"  BROKEN {family}: {status} {answer!r} body[:200]={body.hex()}")
        lines += [
            "",
            f"{'process':<10} {'soak before':>12} {'soak after':>12} {'growth':>22} "
            f"{'fuzz before':>12} {'fuzz after':>12} {'growth':>22}",
        ]
        for name in sorted(set(result.rss_soak) | set(result.rss_fuzz)):
            soak = result.rss_soak.get(name, (None, None))
            fuzz_rss = result.rss_fuzz.get(name, (None, None))
            lines.append(
                f"{name:<10} {_kib(soak[0]):>12} {_kib(soak[1]):>12} {_growth(*soak):>22} "
                f"{_kib(fuzz_rss[0]):>12} {_kib(fuzz_rss[1]):>12} {_growth(*fuzz_rss):>22}"
            )
        lines.append("")
        problems += violations(result)
    lines.append("RESULT: PASS" if not problems else "RESULT: FAIL")
    lines += [f"  - {problem}" for problem in problems]
    return "\n".join(lines) + "\n"
