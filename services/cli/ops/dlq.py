"""``steward dlq list|replay``: dead letters (``steward.dlq.<consumer>``, :data:`services.chassis.bus.DLQ_PREFIX`).

These commands talk to NATS JetStream directly as the operators' NATS user (:mod:`services.cli.nats_ops`), not
through the gateway: dead letters are events (ids only, never customer data), and only ``ops`` may replay them.

A replay republishes the event envelope unchanged to its original subject with
``Nats-Msg-Id: replay:<consumer>:<event id>`` — JetStream drops a second replay of the same event inside its
duplicate window — and then removes the dead letter. Every consumer of that subject receives it again; those
that already applied it skip it (their inbox has the event id), so only the one that failed acts.
Runbook: docs/runbooks/dlq-replay.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
from google.protobuf.message import DecodeError
from steward.events.v1 import events_pb2

from services.chassis.bus import DLQ_PREFIX
from services.cli.client import EXIT_OK, EXIT_REFUSED, ConfigurationError, GatewayCallError
from services.cli.home import StewardHome
from services.cli.nats_ops import NATS_OPTIONS, NatsUnreachable, connect_ops, resolve_nats
from services.cli.ops.invocation import HOME_OPTION, Invocation
from services.cli.render import table

__all__ = ["DeadLetter", "dlq"]

REFUSED = "RefusedEvent"


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter: its stream sequence (the id ``--id`` takes) and what its headers say."""

    id: int
    original_subject: str
    consumer: str
    error_type: str
    reason: str
    event_id: str
    event_type: str
    dead_lettered_at: str
    count: int = 1
    """Dead letters of the same event for the same consumer (more than one: it failed again after a replay)."""

    @property
    def replayable(self) -> bool:
        """Undecodable events have no id and cannot become acceptable by repetition."""
        return bool(self.event_id) and bool(self.original_subject)

    @property
    def why(self) -> str:
        """Error type, with the consumer's refusal reason when it gave one."""
        return f"{self.error_type} {self.reason}".strip()


def _dead_letter(msg: Any) -> DeadLetter:
    headers = msg.headers or {}
    try:
        event = events_pb2.Event.FromString(msg.data or b"")
        event_id, event_type = event.id, event.type
    except DecodeError:
        event_id, event_type = "", "(undecodable)"
    when = msg.time.astimezone(dt.UTC).isoformat(timespec="seconds") if msg.time else ""
    return DeadLetter(
        id=int(msg.seq),
        original_subject=str(headers.get("Steward-Original-Subject", "")),
        consumer=str(headers.get("Steward-Consumer", str(msg.subject).removeprefix(DLQ_PREFIX))),
        error_type=str(headers.get("Steward-Error-Type", "")),
        reason=str(headers.get("Steward-Reason", "")),
        event_id=event_id,
        event_type=event_type,
        dead_lettered_at=when,
    )


async def _read(js: Any, stream: str, consumer: str | None) -> list[tuple[DeadLetter, Any]]:
    """Every dead letter (of ``consumer``, or all), oldest first, with the raw message for a replay."""
    from nats.js.errors import NotFoundError

    subject = f"{DLQ_PREFIX}{consumer}" if consumer else f"{DLQ_PREFIX}>"
    found: list[tuple[DeadLetter, Any]] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            break
        found.append((_dead_letter(msg), msg))
        seq = int(msg.seq) + 1
    counts = Counter((letter.consumer, letter.event_id) for letter, _ in found if letter.event_id)
    return [
        (DeadLetter(**(asdict(letter) | {"count": counts.get((letter.consumer, letter.event_id), 1)})), msg)
        for letter, msg in found
    ]


@dataclass
class _Outcome:
    letter: DeadLetter
    action: str  # replayed | duplicate | would-replay | skipped
    detail: str = ""
    replayed_as: int | None = None


async def _replay(
    js: Any,
    stream: str,
    chosen: list[tuple[DeadLetter, Any]],
    *,
    dry_run: bool,
    include_refused: bool,
) -> list[_Outcome]:
    outcomes = []
    for letter, msg in chosen:
        if not letter.replayable:
            outcomes.append(_Outcome(letter, "skipped", "undecodable or without an original subject: not replayable"))
            continue
        if letter.error_type == REFUSED and not include_refused:
            outcomes.append(
                _Outcome(letter, "skipped", f"refused by {letter.consumer} ({letter.reason}): find out who sent it")
            )
            continue
        if dry_run:
            outcomes.append(_Outcome(letter, "would-replay", f"to {letter.original_subject}"))
            continue
        ack = await js.publish(
            letter.original_subject,
            msg.data,
            stream=stream,
            headers={"Nats-Msg-Id": f"replay:{letter.consumer}:{letter.event_id}"},
            timeout=5.0,
        )
        # A duplicate was replayed before, inside JetStream's window: the event is on its subject either way.
        await js.delete_msg(stream, letter.id)
        action = "duplicate" if ack.duplicate else "replayed"
        outcomes.append(_Outcome(letter, action, f"to {letter.original_subject}", replayed_as=ack.seq))
    return outcomes


@dataclass
class _Run:
    home: StewardHome
    json_output: bool
    stream: str
    nats: dict[str, Any]

    def fail(self, error: GatewayCallError | ConfigurationError) -> None:
        Invocation(home=self.home, json_output=self.json_output).fail(error)

    async def session(self, work: Any) -> Any:
        endpoint = resolve_nats(
            self.home,
            url=self.nats["nats_url"],
            nkey_seed_file=self.nats["nats_nkey_seed"],
            creds_file=self.nats["nats_creds"],
            ca_file=self.nats["nats_ca_file"],
        )
        from nats.errors import Error as NatsError
        from nats.js.errors import NotFoundError

        connection = await connect_ops(endpoint)
        try:
            js = connection.jetstream(timeout=5.0)
            try:
                await js.stream_info(self.stream)
            except NotFoundError:
                raise GatewayCallError(
                    "NOT_FOUND", f"no stream {self.stream!r} on {endpoint.url}: check --stream"
                ) from None
            return await work(js)
        except (NatsError, TimeoutError) as exc:
            # A user without the JetStream API (not ops) sees its requests time out: say both possibilities.
            raise GatewayCallError(
                "UNAVAILABLE",
                f"JetStream at {endpoint.url} did not answer ({type(exc).__name__}): is NATS healthy, and are the "
                "credentials the ops user's?",
            ) from None
        finally:
            await connection.close()

    def run(self, work: Any) -> Any:
        try:
            return asyncio.run(self.session(work))
        except NatsUnreachable as exc:
            self.fail(GatewayCallError("UNAVAILABLE", f"{exc}; check --nats-url and the credentials"))
        except (GatewayCallError, ConfigurationError) as exc:
            self.fail(exc)


def _common(fn: Any) -> Any:
    for option in reversed(
        [
            *NATS_OPTIONS,
            click.option(
                "--stream", default="STEWARD", show_default=True, help="JetStream stream of the dead letters."
            ),
            HOME_OPTION,
            click.option("--json", "json_output", is_flag=True, help="Print one JSON object instead of text."),
        ]
    ):
        fn = option(fn)
    return fn


def _run(home: Path, json_output: bool, stream: str, nats: dict[str, Any]) -> _Run:
    return _Run(StewardHome(home.expanduser().resolve()), json_output, stream, nats)


@click.group()
def dlq() -> None:
    """Dead-lettered events: list them, replay them to their original subject (NATS user ops)."""


@dlq.command("list")
@click.option("--consumer", help="Only this consumer's dead letters (e.g. vault-dsr-tasks) [all].")
@_common
def dlq_list(consumer: str | None, home: Path, json_output: bool, stream: str, **nats: Any) -> None:
    """Dead letters, oldest first: id (stream sequence), original subject, consumer, reason, count."""
    run = _run(home, json_output, stream, nats)

    async def work(js: Any) -> list[DeadLetter]:
        return [letter for letter, _msg in await _read(js, stream, consumer)]

    letters: list[DeadLetter] = run.run(work)
    rows = [
        (d.id, d.original_subject or "?", d.consumer, d.why, d.count, d.event_id or "-", d.dead_lettered_at)
        for d in letters
    ]
    text = table(
        ["ID", "ORIGINAL SUBJECT", "CONSUMER", "REASON", "COUNT", "EVENT", "AT"], rows, empty="(no dead letters)"
    )
    payload = {"dead_letters": [asdict(d) for d in letters], "depth": len(letters)}
    click.echo(json.dumps(payload) if json_output else text)


@dlq.command("replay")
@click.option("--id", "ids", type=click.IntRange(min=1), multiple=True, help="Dead letter id (from `dlq list`).")
@click.option("--all", "replay_all", is_flag=True, help="Every dead letter (of --consumer, when given).")
@click.option("--consumer", help="With --all: only this consumer's dead letters.")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; change nothing.")
@click.option("--include-refused", is_flag=True, help="Also replay events a consumer refused (RefusedEvent).")
@_common
def dlq_replay(
    ids: tuple[int, ...],
    replay_all: bool,
    consumer: str | None,
    dry_run: bool,
    include_refused: bool,
    home: Path,
    json_output: bool,
    stream: str,
    **nats: Any,
) -> None:
    """Republish dead letters to their original subject (same event, Nats-Msg-Id replay:<consumer>:<event id>)
    and remove them from the dead letters.

    Exit 0 when every chosen one was replayed (or would be, with --dry-run); 1 when one is unknown or skipped.
    """
    if bool(ids) == replay_all:
        raise click.UsageError("pass --id ID (repeatable) or --all, not both and not neither")
    if consumer and not replay_all:
        raise click.UsageError("--consumer narrows --all; with --id the ids say which dead letters")
    run = _run(home, json_output, stream, nats)

    async def work(js: Any) -> tuple[list[_Outcome], list[int]]:
        letters = await _read(js, stream, consumer)
        by_id = {letter.id: (letter, msg) for letter, msg in letters}
        missing = [i for i in ids if i not in by_id]
        chosen = letters if replay_all else [by_id[i] for i in ids if i in by_id]
        return await _replay(js, stream, chosen, dry_run=dry_run, include_refused=include_refused), missing

    outcomes, missing = run.run(work)
    lines = [f"{o.letter.id}: {o.action} {o.detail}".rstrip() for o in outcomes]
    lines += [f"{i}: not a dead letter in {stream} (see `steward dlq list`)" for i in missing]
    payload = {
        "outcomes": [
            {
                "id": o.letter.id,
                "event_id": o.letter.event_id,
                "action": o.action,
                "detail": o.detail,
                "replayed_as": o.replayed_as,
            }
            for o in outcomes
        ],
        "missing": missing,
        "dry_run": dry_run,
    }
    click.echo(json.dumps(payload) if json_output else ("\n".join(lines) or "(no dead letters)"))
    failed = missing or any(o.action == "skipped" for o in outcomes)
    raise SystemExit(EXIT_REFUSED if failed else EXIT_OK)
