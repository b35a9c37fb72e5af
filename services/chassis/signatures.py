"""Offline check of a Transit Ed25519 signature: what the vault's audit checkpoints and dsr's evidence and shred
certificates are verified with, from the published public key alone (no OpenBao, no database)."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.chassis.transit import Signature

__all__ = ["signature_verifies"]


def signature_verifies(public_key: bytes | None, message: bytes, signature: str) -> bool:
    """Does ``signature`` (Transit form) verify ``message`` under the raw Ed25519 ``public_key``? Offline."""
    if public_key is None:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(Signature.parse(signature).raw, message)
    except (InvalidSignature, ValueError):
        return False
    return True
