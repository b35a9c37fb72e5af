"""The JetStream streams Steward runs on, declared once: what ``steward nats apply`` creates or updates,
what a service creates when its stream is missing, and what every service checks at start.

- ``STEWARD`` (``settings.stream``): every event and command (``steward.>``), dead letters included,
  file storage, ``settings.stream_replicas`` replicas, kept ``settings.stream_max_age_s`` (0 = forever),
  duplicate window 2 minutes (publishers set ``Nats-Msg-Id``).
- ``STEWARD_DLQ`` (``settings.dlq_stream``): a copy of the dead letters (``steward.dlq.>``) sourced from
  ``STEWARD`` and kept longer (``settings.dlq_max_age_s``), so a dead letter outlives the events stream's age
  limit until someone replays or drops it. A source, not a second owner of ``steward.dlq.>``: two streams
  cannot share subjects, and publishers and replay tools keep using ``STEWARD`` unchanged.

:func:`check_streams` compares the live configuration with the declaration and names every shortfall
(fewer replicas, shorter retention, a message or byte limit the declaration does not have, the dead-letter
stream missing or not sourcing the dead letters). Services log each one at start (``stream_check = "warn"``)
or keep their events in the outbox until the streams are fixed (``"refuse"``).
"""

from __future__ import annotations

from collections.abc import Sequence

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamSource
from nats.js.errors import NotFoundError

from services.chassis.settings import NatsSettings

__all__ = [
    "DLQ_SUBJECTS",
    "DUPLICATE_WINDOW_S",
    "EVENT_SUBJECTS",
    "StreamsBelowDeclared",
    "apply_streams",
    "check_streams",
    "declared_streams",
    "ensure_events_stream",
]

EVENT_SUBJECTS = ("steward.>",)
DLQ_SUBJECTS = "steward.dlq.>"
DUPLICATE_WINDOW_S = 120.0


class StreamsBelowDeclared(RuntimeError):
    """The live streams keep less than declared (``stream_check = "refuse"``); the message lists each shortfall."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def _age(seconds: float) -> float | None:
    return seconds if seconds > 0 else None


def declared_streams(settings: NatsSettings) -> list[StreamConfig]:
    """The events stream first, then the dead-letter stream that sources from it."""
    events = StreamConfig(
        name=settings.stream,
        subjects=list(EVENT_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        num_replicas=settings.stream_replicas,
        max_age=_age(settings.stream_max_age_s),
        duplicate_window=DUPLICATE_WINDOW_S,
    )
    dead_letters = StreamConfig(
        name=settings.dlq_stream,
        sources=[StreamSource(name=settings.stream, filter_subject=DLQ_SUBJECTS)],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        num_replicas=settings.stream_replicas,
        max_age=_age(settings.dlq_max_age_s),
    )
    return [events, dead_letters]


async def apply_streams(js: JetStreamContext, settings: NatsSettings) -> list[tuple[str, str]]:
    """Create each declared stream, or update it to the declaration; ``[(name, "created"|"updated")]``.

    Idempotent. Needs the JetStream API of both streams (the ``ops`` NATS user). Updating keeps the stored
    messages; NATS refuses changes it cannot make in place (storage type), and that error is raised as is.
    """
    done = []
    for config in declared_streams(settings):
        try:
            await js.stream_info(str(config.name))
        except NotFoundError:
            await js.add_stream(config)
            done.append((str(config.name), "created"))
            continue
        await js.update_stream(config)
        done.append((str(config.name), "updated"))
    return done


async def ensure_events_stream(js: JetStreamContext, settings: NatsSettings) -> None:
    """Create the events stream from the declaration when it is missing; never change an existing one.

    What a service does at start (its NATS user may create only that stream); ``steward nats apply`` owns
    updates and the dead-letter stream.
    """
    events = declared_streams(settings)[0]
    try:
        await js.stream_info(str(events.name))
    except NotFoundError:
        await js.add_stream(events)


def _retention_shortfalls(name: str, declared: StreamConfig, live: StreamConfig) -> list[str]:
    problems = []
    want_age, have_age = declared.max_age or 0.0, live.max_age or 0.0
    if have_age and (not want_age or have_age < want_age):
        declared_age = f"{want_age:.0f}s" if want_age else "no age limit"
        problems.append(f"stream {name} keeps messages {have_age:.0f}s, declared {declared_age}")
    for limit in ("max_msgs", "max_bytes"):
        have_n: int = getattr(live, limit) or -1
        want_n: int = getattr(declared, limit) or -1
        if have_n > 0 and (want_n <= 0 or have_n < want_n):
            problems.append(f"stream {name} has {limit}={have_n}, declared {'none' if want_n <= 0 else want_n}")
    return problems


async def check_streams(js: JetStreamContext, settings: NatsSettings) -> list[str]:
    """Every way the live streams keep less than :func:`declared_streams` says; empty when they match."""
    problems = []
    for declared in declared_streams(settings):
        name = str(declared.name)
        try:
            live = (await js.stream_info(name)).config
        except NotFoundError:
            problems.append(f"stream {name} is missing (run `steward nats apply`)")
            continue
        if (live.num_replicas or 1) < (declared.num_replicas or 1):
            problems.append(f"stream {name} has {live.num_replicas or 1} replicas, declared {declared.num_replicas}")
        problems += _retention_shortfalls(name, declared, live)
        if declared.sources:
            want = {(s.name, s.filter_subject) for s in declared.sources}
            have = {(s.name, s.filter_subject) for s in live.sources or []}
            if not want <= have:
                problems.append(f"stream {name} does not source {DLQ_SUBJECTS} from {settings.stream}")
    return problems
