"""What audit hashes and checkpoint signatures cover (services/vault/audit.py, services/vault/checkpoints.py),
without I/O: one hashed-field list, one signed message format, offline Ed25519 verification."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.chassis.signatures import signature_verifies
from services.chassis.transit import Signature
from services.vault.audit import HASHED_FIELDS, entry_hash
from services.vault.checkpoints import checkpoint_message
from services.vault.models import AuditEntry


def test_every_audit_column_but_the_links_is_hashed() -> None:
    # A column added to AuditEntry without joining the hash would be editable without breaking the chain.
    columns = {column.name for column in AuditEntry.__table__.columns}
    assert set(HASHED_FIELDS) == columns - {"prev_hash", "hash"}
    assert len(HASHED_FIELDS) == len(set(HASHED_FIELDS))


def _entry(**changes: object) -> AuditEntry:
    fields: dict[str, object] = {
        "tenant_id": "t-1",
        "seq": 7,
        "at": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "principal": "key:alice",
        "principal_kind": "api_key",
        "action": "record.read",
        "target_ids": "r-1 r-2",
        "result": "ok",
        "support_grant_id": "",
    }
    fields.update(changes)
    return AuditEntry(**fields)


def test_each_hashed_field_changes_the_hash_and_the_time_zone_does_not() -> None:
    base = entry_hash("0" * 64, _entry())
    for name in HASHED_FIELDS:
        value = getattr(_entry(), name)
        other = value + timedelta(microseconds=1) if name == "at" else (value + 1 if name == "seq" else f"{value}x")
        assert entry_hash("0" * 64, _entry(**{name: other})) != base, name
    same_instant = datetime(2026, 1, 2, 8, 34, 5, 678901, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert entry_hash("0" * 64, _entry(at=same_instant)) == base
    assert entry_hash("0" * 64, _entry(at=datetime(2026, 1, 2, 3, 4, 5, 678901))) == base  # naive UTC (SQLite)
    assert entry_hash("1" * 64, _entry()) != base


def _signed(message: bytes) -> tuple[bytes, str]:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return public, "vault:v1:" + base64.b64encode(key.sign(message)).decode()


def test_the_checkpoint_message_is_compact_json_a_tenant_can_rebuild() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    message = checkpoint_message("t-1", 42, "ab" * 32, at)
    assert json.loads(message) == ["steward.audit.checkpoint.v1", "t-1", 42, "ab" * 32, "2026-01-02T03:04:05.000006"]
    assert message == checkpoint_message("t-1", 42, "ab" * 32, at.replace(tzinfo=None))


def test_a_signature_verifies_offline_and_one_changed_byte_fails() -> None:
    message = checkpoint_message("t-1", 42, "ab" * 32, datetime(2026, 1, 2, tzinfo=UTC))
    public, signature = _signed(message)
    assert signature_verifies(public, message, signature)
    assert not signature_verifies(public, message.replace(b"42", b"43"), signature)
    raw = bytearray(Signature.parse(signature).raw)
    raw[0] ^= 1
    assert not signature_verifies(public, message, "vault:v1:" + base64.b64encode(bytes(raw)).decode())
    other, _ = _signed(message)
    assert not signature_verifies(other, message, signature)
    assert not signature_verifies(None, message, signature)  # a key version Transit does not have
    for garbage in ("", "vault:v1:", "vault:vX:AAAA", "hmac:v1:AAAA", "vault:v1:!!!"):
        assert not signature_verifies(public, message, garbage), garbage


def test_transit_signature_form_is_parsed() -> None:
    parsed = Signature.parse("vault:v3:" + base64.b64encode(b"x" * 64).decode())
    assert (parsed.key_version, parsed.raw) == (3, b"x" * 64)
