"""AES-256-GCM sealing and the canonical AAD encoding (services/vault/sealing.py)."""

from __future__ import annotations

import pytest

from services.vault.sealing import NONCE_BYTES, SealBroken, Sealer, key_aad, new_key, record_aad

AAD = record_aad("tenant-a", "rec-1", "note", "subj-1", 1)


def test_round_trip_returns_the_plaintext() -> None:
    sealer = Sealer(new_key())
    blob = sealer.seal(b"hello world", AAD)
    assert sealer.open(blob, AAD) == b"hello world"
    assert b"hello world" not in blob


def test_each_seal_uses_a_fresh_nonce() -> None:
    sealer = Sealer(new_key())
    first, second = sealer.seal(b"same", AAD), sealer.seal(b"same", AAD)
    assert first[:NONCE_BYTES] != second[:NONCE_BYTES]
    assert first != second


def test_new_keys_are_32_random_bytes() -> None:
    a, b = new_key(), new_key()
    assert len(a) == 32 and a != b


@pytest.mark.parametrize("position", [0, NONCE_BYTES, -1])
def test_any_flipped_bit_breaks_the_seal(position: int) -> None:
    sealer = Sealer(new_key())
    blob = bytearray(sealer.seal(b"payload", AAD))
    blob[position] ^= 0x01
    with pytest.raises(SealBroken):
        sealer.open(bytes(blob), AAD)


def test_truncated_blob_breaks_the_seal() -> None:
    sealer = Sealer(new_key())
    blob = sealer.seal(b"payload", AAD)
    for cut in (0, 5, NONCE_BYTES + 15, len(blob) - 1):
        with pytest.raises(SealBroken):
            sealer.open(blob[:cut], AAD)


@pytest.mark.parametrize(
    "other",
    [
        record_aad("tenant-b", "rec-1", "note", "subj-1", 1),
        record_aad("tenant-a", "rec-2", "note", "subj-1", 1),
        record_aad("tenant-a", "rec-1", "email", "subj-1", 1),
        record_aad("tenant-a", "rec-1", "note", "subj-2", 1),
        record_aad("tenant-a", "rec-1", "note", None, 1),
        record_aad("tenant-a", "rec-1", "note", "subj-1", 2),
    ],
)
def test_a_blob_moved_to_another_record_identity_does_not_open(other: bytes) -> None:
    sealer = Sealer(new_key())
    blob = sealer.seal(b"payload", AAD)
    with pytest.raises(SealBroken):
        sealer.open(blob, other)


def test_wrong_key_breaks_the_seal_and_the_message_holds_no_data() -> None:
    blob = Sealer(new_key()).seal(b"secret-payload", AAD)
    with pytest.raises(SealBroken) as caught:
        Sealer(new_key()).open(blob, AAD)
    assert "secret" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_sealer_rejects_keys_that_are_not_256_bits_and_hides_its_key() -> None:
    key = new_key()
    for bad in (b"", key[:16], key + b"x"):
        with pytest.raises(ValueError):
            Sealer(bad)
    assert key.hex() not in repr(Sealer(key)) and "key hidden" in repr(Sealer(key))


def test_record_aad_field_boundaries_cannot_be_shifted() -> None:
    assert record_aad("a|b", "c", "k", "s", 1) != record_aad("a", "b|c", "k", "s", 1)
    assert record_aad("ab", "c", "k", "s", 1) != record_aad("a", "bc", "k", "s", 1)
    assert record_aad("t", "r", "k", "s1", 1) != record_aad("t", "r", "k", "s", 11)
    assert record_aad("t", "r", "", "ks", 1) != record_aad("t", "r", "k", "s", 1)


def test_record_aad_is_deterministic_and_versioned() -> None:
    assert record_aad("t", "r", "k", "s", 3) == record_aad("t", "r", "k", "s", 3)
    assert record_aad("t", "r", "k", "s", 3).startswith(b"\x00\x00\x00\x02v1")


def test_record_aad_rejects_bad_versions() -> None:
    for bad in (-1, True, 1.0, "1"):
        with pytest.raises(ValueError):
            record_aad("t", "r", "k", "s", bad)  # type: ignore[arg-type]


def test_key_aad_binds_tenant_and_key_id_and_never_equals_a_record_aad() -> None:
    assert key_aad("t1", "k1") != key_aad("t2", "k1")
    assert key_aad("t1", "k1") != key_aad("t1", "k2")
    assert key_aad("t|k", "1") != key_aad("t", "k|1")
    assert key_aad("t", "k") not in {record_aad("t", "k", "", None, 0), record_aad("dek.v1", "t", "k", None, 0)}
