"""Normalisation and keyed lookup digests (services/vault/blind_index.py)."""

from __future__ import annotations

import pytest

from services.chassis.errors import InvalidArgument
from services.vault.blind_index import (
    BlindIndex,
    normalize_email,
    normalize_external_id,
    normalize_phone,
)
from services.vault.sealing import new_key


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ana@example.com", "ana@example.com"),
        ("  Ana.Silva+crm@Example.CO.IN \n", "ana.silva+crm@example.co.in"),
        ("ANA@EXAMPLE.COM", "ana@example.com"),
    ],
)
def test_valid_emails_are_trimmed_and_lower_cased(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "ana.acme.com",
        "ana@@acme.com",
        "ana@b@acme.com",
        "@acme.com",
        "ana@localhost",
        "ana@acme.",
        "ana@.acme.com",
        "ana@exa..mple.com",
        "an a@acme.com",
        "ana@exa mple.com",
        "ana\x00@acme.com",
        "a" * 65 + "@acme.com",
        "ana@" + "d" * 250 + ".com",
    ],
)
def test_invalid_emails_are_rejected_without_echoing_them(raw: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalize_email(raw)
    assert caught.value.message == "email is not a valid address; send e.g. name@example.com"
    if raw.strip():
        assert raw.strip() not in caught.value.message


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("98765 43210", "IN", "+919876543210"),
        ("+91 98765-43210", "IN", "+919876543210"),
        ("098765 43210", "IN", "+919876543210"),
        ("+44 20 7946 0958", "IN", "+442079460958"),
        ("(202) 555-0143", "US", "+12025550143"),
    ],
)
def test_valid_phones_become_e164(raw: str, region: str, expected: str) -> None:
    assert normalize_phone(raw, region) == expected


@pytest.mark.parametrize("raw", ["", "  ", "12345", "not a phone", "+91 12345", "+999 123456789"])
def test_invalid_phones_are_rejected_without_echoing_them(raw: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalize_phone(raw)
    assert "phone is not a valid number" in caught.value.message
    if raw.strip():
        assert raw.strip() not in caught.value.message
    assert caught.value.__cause__ is None


def test_external_ids_are_trimmed_and_bounded() -> None:
    assert normalize_external_id("  CRM-0042 ") == "CRM-0042"
    assert normalize_external_id("x" * 256) == "x" * 256
    for bad in ("", "   ", "x" * 257):
        with pytest.raises(InvalidArgument) as caught:
            normalize_external_id(bad)
        assert "1 to 256 characters" in caught.value.message


def test_same_input_gives_the_same_full_length_digest() -> None:
    index = BlindIndex(new_key())
    digest = index.digest("email", "ana@example.com")
    assert len(digest) == 32
    assert index.digest("email", "ana@example.com") == digest
    assert BlindIndex(bytes(index_key := new_key())).digest("email", "x@y.z") == BlindIndex(index_key).digest(
        "email", "x@y.z"
    )


def test_digest_raw_normalises_first() -> None:
    index = BlindIndex(new_key())
    assert index.digest_raw("email", "  ANA@Example.com ") == index.digest("email", "ana@example.com")
    assert index.digest_raw("phone", "98765 43210") == index.digest_raw("phone", "+919876543210")
    assert index.digest_raw("phone", "(202) 555-0143", default_region="US") == index.digest("phone", "+12025550143")
    assert index.digest_raw("external_id", " CRM-1 ") == index.digest("external_id", "CRM-1")


def test_digest_raw_rejects_invalid_input() -> None:
    with pytest.raises(InvalidArgument):
        BlindIndex(new_key()).digest_raw("email", "not-an-email")


def test_keys_differ_per_tenant() -> None:
    tenant_a, tenant_b = BlindIndex(new_key()), BlindIndex(new_key())
    assert tenant_a.digest("email", "ana@example.com") != tenant_b.digest("email", "ana@example.com")


def test_keys_differ_per_field() -> None:
    index = BlindIndex(new_key())
    value = "12345"
    digests = {index.digest(field, value) for field in ("email", "phone", "external_id")}
    assert len(digests) == 3


def test_unknown_fields_and_short_root_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        BlindIndex(new_key()).digest("name", "ana")
    with pytest.raises(ValueError):
        BlindIndex(b"short")
    key = new_key()
    assert key.hex() not in repr(BlindIndex(key))
