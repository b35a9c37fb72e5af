"""API-key token format, checksum and hashing (no I/O)."""

from __future__ import annotations

import pytest

from services.chassis.errors import Unauthenticated
from services.gateway.apikeys import _new_token, hash_secret, parse_token


def test_issued_tokens_parse_back_to_their_parts() -> None:
    key_id, secret, token = _new_token("live")
    parsed = parse_token(token)
    assert (parsed.env, parsed.key_id, parsed.secret) == ("live", key_id, secret)
    assert token == f"stw_live_{key_id}_{secret}"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "stw_live",
        "stw_LIVE_0123456789abcdef_" + "a" * 38,
        "stw_live_0123456789abcdeg_" + "a" * 38,
        "stw_live_0123456789abcdef_" + "a" * 37,
        "stw_live_0123456789abcdef_" + "a" * 37 + "_",
        "xyz_live_0123456789abcdef_" + "a" * 38,
    ],
)
def test_malformed_tokens_are_refused_without_a_lookup(token: str) -> None:
    with pytest.raises(Unauthenticated, match="malformed API key"):
        parse_token(token)


def test_a_single_changed_character_breaks_the_checksum() -> None:
    _, _, token = _new_token("test")
    position = len(token) - 20
    flipped = token[:position] + ("A" if token[position] != "A" else "B") + token[position + 1 :]
    with pytest.raises(Unauthenticated):
        parse_token(flipped)


def test_hash_depends_on_pepper_key_id_and_secret() -> None:
    base = hash_secret(b"pepper-one", "k1", "s")
    assert len(base) == 64
    assert base != hash_secret(b"pepper-two", "k1", "s")
    assert base != hash_secret(b"pepper-one", "k2", "s")
    assert base != hash_secret(b"pepper-one", "k1", "t")
    assert base == hash_secret(b"pepper-one", "k1", "s")


def test_token_secret_is_never_in_its_hash() -> None:
    key_id, secret, token = _new_token("live")
    digest = hash_secret(b"pepper", key_id, secret)
    assert secret not in digest and token not in digest
