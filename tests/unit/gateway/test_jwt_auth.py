"""Operator token verification against an in-memory JWKS."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.chassis.clock import ManualClock
from services.chassis.errors import Unauthenticated, Unavailable
from services.gateway.jwt_auth import JwksSource, OperatorVerifier
from services.gateway.settings import JwtSettings

ISS, AUD = "https://idp.example", "steward"


class MemoryJwks(JwksSource):
    """A JWKS served from memory, counting reads; ``document=None`` simulates an unreachable IdP."""

    def __init__(self, settings: JwtSettings, document: dict[str, Any] | None, clock: ManualClock) -> None:
        super().__init__(settings, clock=clock)
        self.document = document

    def _read(self) -> bytes:
        if self.document is None:
            raise OSError("idp down")
        return json.dumps(self.document).encode()


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwks() -> dict[str, Any]:
    return {
        "keys": [
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key())), "kid": "r1"},
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key())), "kid": "e1"},
        ]
    }


def settings(**kw: Any) -> JwtSettings:
    return JwtSettings(jwks_url="https://idp.example/jwks", issuer=ISS, audience=AUD, **kw)


def token(kid: str = "r1", alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISS, "aud": AUD, "sub": "op1", "iat": now, "exp": now + 300, "amr": ["otp"], "roles": ["support"]}
    body.update(claims)
    key = EC_KEY if alg.startswith("ES") else RSA_KEY
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


async def test_valid_token_yields_subject_roles_and_credential() -> None:
    verifier = OperatorVerifier(settings(), MemoryJwks(settings(), jwks(), ManualClock()))
    claims = await verifier.verify(token(roles=["support", "ops:admin", "root"], jti="abc"))
    assert claims.subject == "op1" and claims.roles == frozenset({"support", "ops:admin"})
    assert claims.credential_id == "jwt:abc"


async def test_ec_key_cannot_verify_an_rsa_algorithm() -> None:
    verifier = OperatorVerifier(settings(), MemoryJwks(settings(), jwks(), ManualClock()))
    forged = token(kid="e1", alg="RS256")
    with pytest.raises(Unauthenticated, match="does not match"):
        await verifier.verify(forged)


async def test_unknown_kid_refetches_at_most_once_per_interval() -> None:
    clock = ManualClock()
    source = MemoryJwks(settings(jwks_refetch_interval_s=30), jwks(), clock)
    verifier = OperatorVerifier(settings(jwks_refetch_interval_s=30), source)
    await verifier.verify(token())
    assert source.fetches == 1
    for _ in range(20):
        with pytest.raises(Unauthenticated, match="does not publish"):
            await verifier.verify(token(kid="made-up"))
    assert source.fetches == 1
    clock.advance(31)
    with pytest.raises(Unauthenticated):
        await verifier.verify(token(kid="made-up"))
    assert source.fetches == 2


async def test_rotated_in_key_is_picked_up_by_refetch() -> None:
    clock = ManualClock()
    document = {"keys": jwks()["keys"][:1]}
    source = MemoryJwks(settings(), document, clock)
    verifier = OperatorVerifier(settings(), source)
    await verifier.verify(token())
    document["keys"] = jwks()["keys"]
    clock.advance(31)
    claims = await verifier.verify(token(kid="e1", alg="ES256"))
    assert claims.subject == "op1"


async def test_idp_unreachable_fails_closed_with_unavailable() -> None:
    verifier = OperatorVerifier(settings(), MemoryJwks(settings(), None, ManualClock()))
    with pytest.raises(Unavailable, match="JWKS"):
        await verifier.verify(token())


async def test_leeway_accepts_slight_clock_skew_only() -> None:
    verifier = OperatorVerifier(settings(leeway_s=30), MemoryJwks(settings(), jwks(), ManualClock()))
    now = int(time.time())
    await verifier.verify(token(exp=now - 10, iat=now - 100))
    with pytest.raises(Unauthenticated, match="expired"):
        await verifier.verify(token(exp=now - 90, iat=now - 200))


def test_symmetric_or_none_algorithms_are_refused_in_settings() -> None:
    for bad in (["HS256"], ["none"], ["RS256", "HS512"], []):
        with pytest.raises(ValueError, match="asymmetric"):
            JwtSettings(algorithms=bad)
    with pytest.raises(ValueError):
        JwtSettings(leeway_s=61)


def test_half_configured_operator_trust_fails_at_start_up() -> None:
    with pytest.raises(ValueError, match="audience"):
        JwtSettings(jwks_url="https://idp.example/jwks", issuer=ISS)
    assert not JwtSettings().configured
