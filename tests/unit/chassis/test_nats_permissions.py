"""The NATS permission table says what the issue asks: only dsr commands the vault, only operators
touch dead letters and the stream, each service publishes only its own subjects and reads only its
own inboxes and durables."""

from __future__ import annotations

import pytest

from services.chassis.nats_permissions import DSR_TASK_SUBJECT, NATS_USERS, OPS, inbox_prefix, permissions


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` one or more trailing tokens."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def may(user: str, action: str, subject: str) -> bool:
    return any(matches(p, subject) for p in permissions()[user][action]["allow"])


SERVICES = [user.name for user in NATS_USERS if not user.admin]


def test_subject_matching_follows_nats_rules() -> None:
    assert matches("steward.>", "steward.a.b") and not matches("steward.>", "steward")
    assert matches("a.*.c", "a.b.c") and not matches("a.*", "a.b.c")


def test_only_dsr_and_operators_may_publish_a_vault_task() -> None:
    assert [u for u in permissions() if may(u, "publish", DSR_TASK_SUBJECT)] == ["dsr", OPS]


@pytest.mark.parametrize("user", SERVICES)
def test_a_service_publishes_only_its_own_events_and_its_own_dead_letters(user: str) -> None:
    own_durables = {d.name for u in NATS_USERS if u.name == user for d in u.consumes}
    for other in ("vault", "gateway", "dsr", "notify", "ops"):
        assert may(user, "publish", f"steward.{other}.x.y") == (other == user)
    assert not may(user, "publish", "steward.dlq.someone-else")
    for durable in own_durables:
        assert may(user, "publish", f"steward.dlq.{durable}")
    for api in ("STREAM.UPDATE.STEWARD", "STREAM.DELETE.STEWARD", "STREAM.PURGE.STEWARD", "STREAM.MSG.GET.STEWARD"):
        assert not may(user, "publish", f"$JS.API.{api}")
    assert not may(user, "publish", "$JS.API.CONSUMER.DURABLE.CREATE.STEWARD.x")
    assert not may(user, "publish", "$JS.API.CONSUMER.CREATE.STEWARD.vault-dsr-tasks")  # filter not pinned


@pytest.mark.parametrize("user", SERVICES)
def test_a_service_reads_only_its_own_inboxes(user: str) -> None:
    for other in SERVICES:
        assert may(user, "subscribe", f"{inbox_prefix(other)}.abc") == (other == user)
    assert not may(user, "subscribe", "_INBOX.abc")
    assert not may(user, "subscribe", DSR_TASK_SUBJECT)


def test_operators_have_the_stream_api_and_dead_letters() -> None:
    assert may(OPS, "publish", "$JS.API.STREAM.UPDATE.STEWARD") and may(OPS, "publish", "steward.dlq.vault-dsr-tasks")
