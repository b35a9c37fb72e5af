"""pacing.py without I/O: quiet windows in the recipient's zone (wrapping midnight, across DST changes, an end
time inside the spring-forward gap), token buckets that spread a backlog instead of failing it, and the Pacer's
verdicts per lane (critical bypasses everything)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from services.chassis.clock import ManualClock
from services.notify.models import DeliveryRow, PreferencesRow
from services.notify.pacing import (
    CHANNEL_NOT_PREFERRED,
    QUIET_HOURS,
    RATE_LIMITED,
    Pacer,
    PacingSettings,
    Preferences,
    TokenBuckets,
    quiet_until,
)
from services.notify.templates import TemplateCatalogue

BERLIN_NIGHTS = Preferences("Europe/Berlin", "en", 22 * 60, 7 * 60)


def test_quiet_window_ends_at_local_end_time_on_the_injected_clock() -> None:
    # 23:00 in Kolkata (UTC+5:30) is inside 21:00-08:00; the window ends 08:00 IST = 02:30 UTC next day.
    kolkata = Preferences("Asia/Kolkata", "en", 21 * 60, 8 * 60)
    assert quiet_until(datetime(2026, 12, 1, 17, 30, tzinfo=UTC), kolkata) == datetime(2026, 12, 2, 2, 30, tzinfo=UTC)
    # After midnight, the same night's window ends the same local day.
    assert quiet_until(datetime(2026, 12, 1, 20, 0, tzinfo=UTC), kolkata) == datetime(2026, 12, 2, 2, 30, tzinfo=UTC)
    # 14:30 local is not quiet; a window that does not wrap; no window at all.
    assert quiet_until(datetime(2026, 12, 1, 9, 0, tzinfo=UTC), kolkata) is None
    lunch = Preferences("Asia/Kolkata", "en", 13 * 60, 14 * 60)
    assert quiet_until(datetime(2026, 12, 1, 7, 45, tzinfo=UTC), lunch) == datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    assert quiet_until(datetime(2026, 12, 1, 9, 0, tzinfo=UTC), lunch) is None
    assert quiet_until(datetime(2026, 12, 1, 17, 30, tzinfo=UTC), Preferences("Asia/Kolkata", "en", 0, 0)) is None
    # The end minute itself is no longer quiet.
    assert quiet_until(datetime(2026, 12, 2, 2, 30, tzinfo=UTC), kolkata) is None


def test_quiet_window_across_dst_changes_ends_at_the_local_wall_time() -> None:
    # Berlin springs forward on 2026-03-29: 07:00 local is 05:00 UTC that morning, 06:00 UTC the morning before.
    assert quiet_until(datetime(2026, 3, 28, 22, 0, tzinfo=UTC), BERLIN_NIGHTS) == datetime(
        2026, 3, 29, 5, 0, tzinfo=UTC
    )
    assert quiet_until(datetime(2026, 3, 27, 22, 0, tzinfo=UTC), BERLIN_NIGHTS) == datetime(
        2026, 3, 28, 6, 0, tzinfo=UTC
    )
    # And falls back on 2026-10-25: 07:00 local is 06:00 UTC.
    assert quiet_until(datetime(2026, 10, 24, 21, 0, tzinfo=UTC), BERLIN_NIGHTS) == datetime(
        2026, 10, 25, 6, 0, tzinfo=UTC
    )
    # A window ending at 02:30, which does not exist on 2026-03-29: it ends when the clocks jump (01:00 UTC).
    gap = Preferences("Europe/Berlin", "en", 23 * 60, 2 * 60 + 30)
    assert quiet_until(datetime(2026, 3, 28, 23, 30, tzinfo=UTC), gap) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    # A window ending at 02:30 on 2026-10-25 (it happens twice): the first time (00:30 UTC).
    assert quiet_until(datetime(2026, 10, 24, 22, 0, tzinfo=UTC), gap) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def test_token_bucket_allows_the_burst_then_spreads_the_rest_one_slot_each() -> None:
    clock = ManualClock(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    buckets = TokenBuckets(PacingSettings(rate_per_s={"email": 2.0}, burst={"email": 3}), clock)
    waits = [buckets.reserve("t-1", "email") for _ in range(6)]
    assert waits == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5]
    # Another tenant and another channel have their own buckets (whatsapp is not limited in these settings).
    assert buckets.reserve("t-2", "email") == 0.0
    assert buckets.reserve("t-1", "whatsapp") == 0.0
    # Time refills the bucket up to the burst, not beyond.
    clock.advance(60)
    assert [buckets.reserve("t-1", "email") for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]


def test_per_tenant_override_of_the_rate() -> None:
    clock = ManualClock(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    settings = PacingSettings(rate_per_s={"email": 1.0}, burst={"email": 1}, tenant_rates={"t-big": {"email": 4.0}})
    buckets = TokenBuckets(settings, clock)
    assert [buckets.reserve("t-big", "email") for _ in range(3)] == [0.0, 0.25, 0.5]
    assert [buckets.reserve("t-small", "email") for _ in range(2)] == [0.0, 1.0]


class _Session:
    """Just enough of a Session: ``get(PreferencesRow, tenant)``."""

    def __init__(self, prefs: dict[str, Any] | None) -> None:
        self.prefs = prefs

    def get(self, model: type, key: str) -> Any:
        assert model is PreferencesRow
        if self.prefs is None:
            return None
        return PreferencesRow(tenant_id=key, preferences_json=json.dumps(self.prefs), updated_at=None)


def _row(lane: str, *, template: str = "policy_change", channel: str = "email", kind: str = "contact") -> DeliveryRow:
    return DeliveryRow(
        delivery_id="d-1",
        tenant_id="t-1",
        lane=lane,
        template=template,
        template_version=f"{template}/en/v1",
        locale="en",
        channel=channel,
        recipient_kind=kind,
        recipient_id="c-1",
        reason_code="",
        attempts=0,
    )


NIGHT = datetime(2026, 12, 1, 17, 30, tzinfo=UTC)  # 23:00 in Kolkata
KOLKATA = {"time_zone": "Asia/Kolkata", "language": "hi", "quiet": [21 * 60, 8 * 60], "channels": {}}


def test_pacer_defers_service_and_marketing_in_quiet_hours_and_lets_critical_through() -> None:
    clock = ManualClock(NIGHT)
    seen: list[str] = []
    pacer = Pacer(PacingSettings(), clock, TemplateCatalogue(), on_deferral=seen.append)
    session: Any = _Session(KOLKATA)
    for lane in ("service", "marketing"):
        verdict = pacer.check(session, _row(lane), NIGHT)
        assert verdict.until == datetime(2026, 12, 2, 2, 30, tzinfo=UTC) and verdict.reason == QUIET_HOURS
    critical = _row("critical", template="breach_notice")
    verdict = pacer.check(session, critical, NIGHT)
    assert verdict.until is None and not verdict.final
    assert critical.template_version == "breach_notice/en/v1"  # no language change for the critical lane
    assert seen == [QUIET_HOURS, QUIET_HOURS]
    # A data subject's delivery is not governed by the tenant's preferences (only rate limited).
    assert pacer.check(session, _row("marketing", template="newsletter", kind="subject"), NIGHT).until is None


def test_pacer_applies_channel_preferences_and_language() -> None:
    day = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    pacer = Pacer(PacingSettings(), ManualClock(day), TemplateCatalogue())
    prefs = dict(KOLKATA, channels={"policy": ["whatsapp"]})
    verdict = pacer.check(_Session(prefs), _row("service"), day)  # type: ignore[arg-type]
    assert verdict.final == "SUPPRESSED" and verdict.reason == CHANNEL_NOT_PREFERRED
    assert pacer.check(_Session(prefs), _row("service", channel="whatsapp"), day).final == ""  # type: ignore[arg-type]
    # A kind the preferences do not restrict goes on; it is rendered in the tenant's language.
    row = _row("service", template="dsr_received")
    assert pacer.check(_Session(prefs), row, day) == pacer.check(_Session(None), _row("service"), day)  # type: ignore[arg-type]
    assert row.locale == "hi" and row.template_version.startswith("dsr_received/hi/")


def test_pacer_rate_limit_defers_never_fails_and_critical_is_exempt() -> None:
    day = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    clock = ManualClock(day)
    pacer = Pacer(PacingSettings(rate_per_s={"email": 1.0}, burst={"email": 1}), clock, TemplateCatalogue())
    session: Any = _Session(None)
    first, second, third = (pacer.check(session, _row("service"), day) for _ in range(3))
    assert first.until is None
    assert (second.until, second.reason, second.final) == (day + timedelta(seconds=1), RATE_LIMITED, "")
    assert third.until == day + timedelta(seconds=2)
    # The deferred delivery, back at its reserved slot, is not charged twice.
    waited = _row("service")
    waited.reason_code = RATE_LIMITED
    assert pacer.check(session, waited, day + timedelta(seconds=1)).until is None
    # Breach notices are never rate limited.
    assert all(pacer.check(session, _row("critical"), day).until is None for _ in range(20))
    assert pacer.deferrals == {RATE_LIMITED: 2}
