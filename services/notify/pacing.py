"""Pacing: whether a claimed delivery goes out now, later or not at all — the tenant's preferences, quiet hours
and per-tenant send rate limits, applied at send time (the delivery engine asks :meth:`Pacer.check` for every
delivery it claims, before it counts an attempt or opens anything personal).

**Lanes.** The critical lane (breach notices) bypasses all of it: no quiet hours, no channel preferences, no
language change and **no rate limit** — a breach notice must go "immediately", and a tenant cannot use the
critical lane to flood anyone (only ``DeclareBreach`` by an operator plans it, a few contacts per tenant), so a
second, higher limit would only be a way to delay the notices the policy promises. The service and marketing
lanes are paced.

**Whose preferences.** ``SetPreferences`` stores one set per tenant: the business client's time zone, language,
quiet hours and channels per notice kind. They are the preferences of the tenant's own contacts, so they apply
to deliveries to tenant contacts (``recipient_kind == "contact"``). Notify stores no preferences for a tenant's
data subjects (the tenant decides when to message its leads); those deliveries are only rate limited.

- **Quiet hours** (minutes after local midnight; ``start > end`` wraps past midnight; ``start == end`` means no
  quiet window): a delivery due inside the window is deferred to the end of the window, computed on the injected
  clock in the recipient's IANA zone with :mod:`zoneinfo`, so a window that spans a DST change ends at the right
  wall-clock time (07:00 local is 05:00 UTC in Berlin after the spring change, 06:00 UTC the night before).
  An end time that does not exist locally (inside the spring-forward gap) resolves to the first instant after it.
- **Channels per notice kind** (``dsr``, ``policy``, ``product_updates``, ``support_access``): a delivery of a
  kind whose preferred channels leave out its channel ends ``SUPPRESSED`` with reason ``channel_not_preferred``
  (the notice still goes on the channels the tenant chose: each channel is its own delivery).
- **Language**: a notice is rendered in the tenant's language when the template exists in it (the delivery's
  template version changes before its first attempt, and ``GetDelivery`` shows the version actually sent).
- **Rate limits**: a token bucket per (tenant, channel): ``rate_per_s`` tokens a second up to ``burst``
  (:class:`PacingSettings`, per-tenant overrides in ``tenant_rates``). A send over the limit is *deferred* —
  it reserves the next free slot (the bucket goes into debt, so a backlog is spread out, not retried in a
  herd) and keeps reason ``rate_limited`` — never failed. Buckets live in the process: with N replicas sending,
  a tenant's ceiling is N times the setting.

Every deferral is counted (``steward_notify_deferrals_total{reason}``, reason ``quiet_hours`` or
``rate_limited``) and left on the delivery (``reason_code``, ``next_attempt_at``), so "why has this not gone
yet" is answered by ``steward notify delivery <id>``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.chassis.clock import Clock
from services.notify.models import DeliveryRow, PreferencesRow
from services.notify.templates import TemplateCatalogue

__all__ = [
    "CHANNEL_NOT_PREFERRED",
    "NOTICE_KINDS",
    "QUIET_HOURS",
    "RATE_LIMITED",
    "Pacer",
    "PacingSettings",
    "Preferences",
    "TokenBuckets",
    "Verdict",
    "notice_kind",
    "quiet_until",
]

QUIET_HOURS = "quiet_hours"
RATE_LIMITED = "rate_limited"
CHANNEL_NOT_PREFERRED = "channel_not_preferred"
NOTICE_KINDS = ("dsr", "policy", "product_updates", "support_access")
_KIND_OF_TEMPLATE = {
    "policy_change": "policy",
    "support_access": "support_access",
    "account_update": "product_updates",
}


def notice_kind(template: str) -> str:
    """The preference kind a template's notices belong to ("" when preferences name no kind for it)."""
    if template.startswith("dsr_"):
        return "dsr"
    return _KIND_OF_TEMPLATE.get(template, "")


class PacingSettings(BaseModel):
    """Per-tenant send rate limits (``STEWARD_NOTIFY__PACING__*``); the critical lane is exempt."""

    rate_per_s: dict[str, float] = Field(
        default_factory=lambda: {"email": 20.0, "whatsapp": 10.0},
        description="Sends a second per tenant and channel (a channel not listed is not limited).",
    )
    burst: dict[str, int] = Field(
        default_factory=lambda: {"email": 100, "whatsapp": 50},
        description="How many sends a tenant may make at once before the rate applies (default: 5 s of rate).",
    )
    tenant_rates: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Per-tenant overrides: tenant id -> channel -> sends a second."
    )


@dataclass(frozen=True, slots=True)
class Preferences:
    """A tenant's stored preferences (what ``SetPreferences`` wrote)."""

    time_zone: str = "UTC"
    language: str = "en"
    quiet_start: int = 0
    quiet_end: int = 0
    channels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> Preferences:
        """Parse the stored JSON (``api.SetPreferences`` checked it before storing)."""
        data = json.loads(text)
        start, end = data.get("quiet", [0, 0])
        chans = {kind: tuple(values) for kind, values in data.get("channels", {}).items()}
        return cls(data.get("time_zone") or "UTC", data.get("language") or "en", int(start), int(end), chans)

    def zone(self) -> ZoneInfo:
        """The IANA zone (UTC if the stored name is no longer known to this system's tz database)."""
        try:
            return ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            return ZoneInfo("UTC")


def _at_local(day: datetime, minute: int, zone: ZoneInfo) -> datetime:
    """The first instant (aware UTC) at which the wall clock in ``zone`` reads at least ``minute`` after midnight
    on ``day``'s local date: that time itself, or the end of the spring-forward gap when it does not exist."""
    wall = datetime.combine(day.date(), time(minute // 60, minute % 60))
    before = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)  # in a gap: read with the offset after the change
    after = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)  # in a gap: read with the offset before it
    low, high = min(before, after), max(before, after)
    if low.astimezone(zone).replace(tzinfo=None) >= wall:
        return low
    while high - low > timedelta(seconds=1):  # only in a gap: find the change to the second
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def quiet_until(now: datetime, prefs: Preferences) -> datetime | None:
    """The end of the quiet window ``now`` falls in (aware UTC), or None when ``now`` is not quiet."""
    start, end = prefs.quiet_start, prefs.quiet_end
    if start == end:
        return None
    zone = prefs.zone()
    local = now.astimezone(zone)
    minute = local.hour * 60 + local.minute
    if start < end:
        quiet = start <= minute < end
        ends_next_day = False
    else:
        quiet = minute >= start or minute < end
        ends_next_day = minute >= start
    if not quiet:
        return None
    day = local + timedelta(days=1) if ends_next_day else local
    return _at_local(day, end, zone)


class TokenBuckets:
    """Token buckets per (tenant, channel) on the injected clock; thread-safe (claims run on worker threads).

    :meth:`reserve` always takes a token and returns how long to wait for it: 0 when one was available, else the
    time until the bucket's debt is paid, so consecutive reservations get consecutive slots.
    """

    def __init__(self, settings: PacingSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, datetime]] = {}

    def rate(self, tenant_id: str, channel: str) -> float:
        """Sends a second for this tenant and channel (0: not limited)."""
        override = self.settings.tenant_rates.get(tenant_id, {})
        return float(override.get(channel, self.settings.rate_per_s.get(channel, 0.0)))

    def reserve(self, tenant_id: str, channel: str) -> float:
        """Take a token; seconds until it may be used (0: now)."""
        rate = self.rate(tenant_id, channel)
        if rate <= 0:
            return 0.0
        burst = float(self.settings.burst.get(channel, max(int(rate * 5), 1)))
        now = self.clock.now()
        with self._lock:
            tokens, last = self._buckets.get((tenant_id, channel), (burst, now))
            tokens = min(burst, tokens + max((now - last).total_seconds(), 0.0) * rate) - 1.0
            self._buckets[(tenant_id, channel)] = (tokens, now)
        return 0.0 if tokens >= 0 else -tokens / rate


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a claimed delivery: send (both empty), wait until ``until``, or end as ``final``."""

    until: datetime | None = None
    final: str = ""
    reason: str = ""


SEND = Verdict()


class Pacer:
    """The hook the delivery engine calls for each claimed delivery (see the module docstring)."""

    def __init__(
        self,
        settings: PacingSettings,
        clock: Clock,
        catalogue: TemplateCatalogue,
        *,
        on_deferral: Callable[[str], None] | None = None,
    ) -> None:
        self.buckets = TokenBuckets(settings, clock)
        self.catalogue = catalogue
        self.on_deferral = on_deferral
        self.deferrals: dict[str, int] = {}

    def preferences(self, session: Session, rows: Sequence[DeliveryRow]) -> dict[str, Preferences]:
        """The stored preferences of the tenants whose contacts ``rows`` are paced for, read and parsed once for a
        claimed batch (one query): tenant id -> preferences (a tenant that stored none is absent)."""
        tenants = {row.tenant_id for row in rows if row.lane != "critical" and row.recipient_kind == "contact"}
        if not tenants:
            return {}
        stored = session.scalars(select(PreferencesRow).where(PreferencesRow.tenant_id.in_(tenants)))
        return {row.tenant_id: Preferences.from_json(row.preferences_json) for row in stored}

    def check(
        self, session: Session, row: DeliveryRow, now: datetime, *, preferences: Mapping[str, Preferences] | None = None
    ) -> Verdict:
        """The verdict for ``row`` (in the claim's transaction; may change its template version to the
        tenant's language). ``preferences``: what :meth:`preferences` read for the claimed batch; None reads them."""
        if row.lane == "critical":
            return SEND
        if row.recipient_kind == "contact":
            if preferences is None:
                stored = session.get(PreferencesRow, row.tenant_id)
                prefs = Preferences.from_json(stored.preferences_json) if stored is not None else None
            else:
                prefs = preferences.get(row.tenant_id)
            if prefs is not None:
                verdict = self._preferences(row, prefs, now)
                if verdict is not SEND:
                    return verdict
        if row.reason_code == RATE_LIMITED:
            return SEND  # this delivery waited for the slot it reserved; it is its turn now
        wait = self.buckets.reserve(row.tenant_id, row.channel)
        if wait > 0:
            return self._defer(now + timedelta(seconds=wait), RATE_LIMITED)
        return SEND

    def _preferences(self, row: DeliveryRow, prefs: Preferences, now: datetime) -> Verdict:
        kind = notice_kind(row.template)
        wanted = prefs.channels.get(kind) if kind else None
        if wanted and row.channel not in wanted:
            return Verdict(final="SUPPRESSED", reason=CHANNEL_NOT_PREFERRED)
        until = quiet_until(now, prefs)
        if until is not None:
            return self._defer(until, QUIET_HOURS)
        if row.attempts == 0 and row.locale != prefs.language:
            try:
                row.template_version = self.catalogue.version(row.template, prefs.language)
                row.locale = prefs.language
            except Exception:  # noqa: S110 - no version in that language: the contact's own locale stays
                pass
        return SEND

    def _defer(self, until: datetime, reason: str) -> Verdict:
        self.deferrals[reason] = self.deferrals.get(reason, 0) + 1
        if self.on_deferral is not None:
            self.on_deferral(reason)
        return Verdict(until=until, reason=reason)
