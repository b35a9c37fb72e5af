"""The one id check every service applies at its edge: what passes, what is refused, and how the refusal reads."""

from __future__ import annotations

import pytest

from services.chassis.errors import InvalidArgument, Reason
from services.chassis.ids import PAGE_TOKEN_MAX_LENGTH, is_id, is_reference, new_id, new_ids, valid_id

ACCEPTED = [
    "",  # absent: whether the field is required is the domain's rule, with its own message
    new_id(),
    "tnt_0123456789abcdef0123456789abcdef",
    "t-1a2b3c",
    "0123456789abcdef",  # API key id
    "dsr:2026-11-30.case_7",
    "WyIiLDMsIjAxOTAiXQ.bWFj-_x",  # base64url page token
    "c2VxOjQy",
    "c2VxOjQ=",  # padded
    "r" * 128,
]
REFUSED = {
    "NUL": "abc\x00def",
    "control": "abc\x01",
    "newline": "abc\n",
    "space": "a b",
    "semicolon": "a;b",
    "slash": "a/b",
    "non-ASCII": "é",
    "too long": "r" * 129,
}


@pytest.mark.parametrize("value", ACCEPTED)
def test_well_formed_ids_pass_unchanged(value: str) -> None:
    assert valid_id("record_id", value) == value


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_malformed_ids_are_refused_naming_the_field_without_echoing_it(kind: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        valid_id("subject_id", REFUSED[kind])
    assert caught.value.message.startswith("subject_id must be at most 128 characters")
    assert REFUSED[kind] not in caught.value.message
    assert caught.value.reason == Reason.MALFORMED_ID
    assert caught.value.metadata == {"field": "subject_id"}


def test_page_tokens_may_be_longer() -> None:
    assert valid_id("page_token", "p" * PAGE_TOKEN_MAX_LENGTH, max_length=PAGE_TOKEN_MAX_LENGTH)
    with pytest.raises(InvalidArgument):
        valid_id("page_token", "p" * (PAGE_TOKEN_MAX_LENGTH + 1), max_length=PAGE_TOKEN_MAX_LENGTH)


def test_references_from_other_systems_use_the_same_characters_without_padding() -> None:
    assert is_reference("dsr:2026-11-30.case_7")
    assert not is_reference("c2VxOjQ=")
    assert not is_reference("")


def test_ids_made_in_a_batch_are_distinct_uuid7s_in_canonical_form() -> None:
    import time
    import uuid

    batch = new_ids(2000)
    assert len(set(batch)) == 2000
    for value in [*batch, new_id()]:
        parsed = uuid.UUID(value)
        assert is_id(value) and parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert abs((parsed.int >> 80) - time.time_ns() // 1_000_000) < 60_000  # the millisecond timestamp
    assert new_ids(0) == []
