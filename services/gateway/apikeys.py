"""API keys: ``stw_<env>_<key id>_<secret>``, stored as an HMAC-SHA256 (peppered) of the secret.

The secret's last six characters are a CRC32 checksum, so typos and random guesses are refused
without a database read and secret scanners can recognise real keys. Unknown, revoked and expired
keys get one identical UNAUTHENTICATED answer, and the comparison runs in constant time even for an
unknown key id. :class:`ApiKeyAuthenticator` caches a verified key for ``ttl_s`` (< 1 s), so a
revocation written by any replica is seen by every other within a second even if no revocation event
reaches it; events (``gateway.apikey.revoked``) only make it faster.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import enqueue, make_event
from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.db import Database
from services.chassis.errors import FailedPrecondition, InvalidArgument, NotFound, Reason, Unauthenticated
from services.chassis.timestamps import to_timestamp
from services.gateway.models import ApiKeyRow, TenantRow
from services.gateway.policy import SCOPES

__all__ = [
    "INVALID_KEY_MESSAGE",
    "ApiKeyAuthenticator",
    "ParsedKey",
    "VerifiedKey",
    "create_key",
    "find_key",
    "hash_secret",
    "key_state",
    "list_keys",
    "parse_token",
    "revoke_key",
    "rotate_key",
]

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_LEN = 32
_CHECK_LEN = 6
_TOKEN = re.compile(r"^stw_([a-z0-9]{1,12})_([0-9a-f]{16})_([0-9A-Za-z]{38})$")  # 32 random + 6 checksum
_NAME = re.compile(r"^[A-Za-z0-9 ._-]{0,100}$")
MAX_TTL_S = 10 * 365 * 24 * 3600
MAX_GRACE_S = 7 * 24 * 3600

INVALID_KEY_MESSAGE = "invalid API key: it is unknown, revoked or expired; ask the tenant admin for a valid key"
MALFORMED_KEY_MESSAGE = "malformed API key: expected stw_<env>_<key id>_<secret> exactly as issued"


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(_BASE62[rem])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LEN)


def _new_token(env: str) -> tuple[str, str, str]:
    """(key id, secret, full token)."""
    key_id = secrets.token_hex(8)
    random_part = "".join(secrets.choice(_BASE62) for _ in range(_RANDOM_LEN))
    body = f"stw_{env}_{key_id}_{random_part}"
    secret = random_part + _checksum(body)
    return key_id, secret, f"{body}{secret[_RANDOM_LEN:]}"


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """The parts of a well-formed token."""

    env: str
    key_id: str
    secret: str


def parse_token(token: str) -> ParsedKey:
    """Split and checksum-verify a token; UNAUTHENTICATED (format message) when it is not one of ours."""
    match = _TOKEN.match(token)
    if match is None:
        raise Unauthenticated(MALFORMED_KEY_MESSAGE)
    env, key_id, secret = match.groups()
    body = f"stw_{env}_{key_id}_{secret[:_RANDOM_LEN]}"
    if not hmac.compare_digest(_checksum(body), secret[_RANDOM_LEN:]):
        raise Unauthenticated(MALFORMED_KEY_MESSAGE)
    return ParsedKey(env=env, key_id=key_id, secret=secret)


def hash_secret(pepper: bytes, key_id: str, secret: str) -> str:
    """Hex HMAC-SHA256 of the secret, bound to its key id."""
    return hmac.new(pepper, f"{key_id}:{secret}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class VerifiedKey:
    """What the gateway knows about a stored key (no secret)."""

    key_id: str
    tenant_id: str
    scopes: frozenset[str]
    secret_hash: str
    expires_at: datetime | None
    revoked_at: datetime | None

    def usable(self, now: datetime) -> bool:
        """Not revoked and not expired at ``now``."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or self.expires_at > now


def _load(session: Session, key_id: str) -> VerifiedKey | None:
    row = session.get(ApiKeyRow, key_id)
    if row is None:
        return None
    return VerifiedKey(
        key_id=row.id,
        tenant_id=row.tenant_id,
        scopes=frozenset(row.scopes.split()),
        secret_hash=row.secret_hash,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


class ApiKeyAuthenticator:
    """Verifies tokens against the database through a short positive/negative cache."""

    def __init__(
        self,
        db: Database,
        pepper: bytes,
        *,
        ttl_s: float,
        clock: Clock = SYSTEM_CLOCK,
        max_entries: int = 50_000,
    ) -> None:
        self._db = db
        self._pepper = pepper
        self._ttl = ttl_s
        self._clock = clock
        self._max = max_entries
        self._cache: dict[str, tuple[VerifiedKey | None, float]] = {}
        self._loading: dict[str, asyncio.Future[VerifiedKey | None]] = {}
        # Compared against when the key id is unknown, so that path costs the same HMAC + compare.
        self._dummy = hash_secret(pepper, "0" * 16, "x")

    def evict(self, key_id: str) -> None:
        """Forget ``key_id`` (a revocation event arrived); the next call re-reads the database."""
        self._cache.pop(key_id, None)

    async def _lookup(self, key_id: str) -> VerifiedKey | None:
        cached = self._cache.get(key_id)
        if cached is not None and self._clock.monotonic() - cached[1] < self._ttl:
            return cached[0]
        pending = self._loading.get(key_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[VerifiedKey | None] = asyncio.get_running_loop().create_future()
        self._loading[key_id] = future
        try:
            loaded_at = self._clock.monotonic()
            entry = await self._db.run(lambda s: _load(s, key_id))
            if len(self._cache) >= self._max:
                self._cache.clear()  # crude but bounded; entries live < 1 s anyway
            self._cache[key_id] = (entry, loaded_at)
            future.set_result(entry)
            return entry
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._loading[key_id]

    async def authenticate(self, token: str) -> VerifiedKey:
        """The stored key for ``token``; UNAUTHENTICATED (one message) for unknown, revoked or expired."""
        parsed = parse_token(token)
        entry = await self._lookup(parsed.key_id)
        presented = hash_secret(self._pepper, parsed.key_id, parsed.secret)
        matches = hmac.compare_digest(presented, entry.secret_hash if entry is not None else self._dummy)
        if entry is None or not matches or not entry.usable(self._clock.now()):
            raise Unauthenticated(INVALID_KEY_MESSAGE)
        return entry


def key_state(row: ApiKeyRow, now: datetime) -> str:
    """``active``, ``revoked`` or ``expired``."""
    if row.revoked_at is not None and row.revoked_at <= now:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


def _validate_scopes(scopes: Iterable[str]) -> list[str]:
    wanted = sorted(set(scopes))
    if not wanted:
        raise InvalidArgument(f"give the key at least one scope from: {' '.join(sorted(SCOPES))}")
    unknown = [scope for scope in wanted if scope not in SCOPES]
    if unknown:
        raise InvalidArgument(f"unknown scopes {unknown}; valid scopes are: {' '.join(sorted(SCOPES))}")
    return wanted


def create_key(
    session: Session,
    *,
    tenant_id: str,
    name: str,
    scopes: Iterable[str],
    ttl_s: int,
    env: str,
    created_by: str,
    pepper: bytes,
    now: datetime,
    rotated_from: str = "",
) -> tuple[ApiKeyRow, str]:
    """Store a new key (hash only), created ``now``, with its ApiKeyCreated event; returns the row and the one-time
    token."""
    wanted = _validate_scopes(scopes)
    if not _NAME.match(name):
        raise InvalidArgument("key name: use at most 100 letters, digits, spaces, '.', '-' or '_'")
    if not 0 <= ttl_s <= MAX_TTL_S:
        raise InvalidArgument(f"ttl_seconds must be between 0 (no expiry) and {MAX_TTL_S}")
    tenant = session.get(TenantRow, tenant_id)
    if tenant is None:
        raise NotFound("no such tenant: check tenant_id", reason=Reason.TENANT_NOT_FOUND)
    if tenant.state != "active":
        raise FailedPrecondition(
            "the tenant is closed: no new API keys can be issued for it", reason=Reason.TENANT_CLOSED
        )
    key_id, secret, token = _new_token(env)
    row = ApiKeyRow(
        id=key_id,
        tenant_id=tenant_id,
        env=env,
        name=name,
        scopes=" ".join(wanted),
        secret_hash=hash_secret(pepper, key_id, secret),
        created_at=now,
        created_by=created_by,
        expires_at=now + timedelta(seconds=ttl_s) if ttl_s else None,
        revoked_at=None,
        rotated_from=rotated_from,
    )
    session.add(row)
    session.flush()
    enqueue(
        session,
        make_event(
            events_pb2.ApiKeyCreated(
                key_id=key_id, tenant_id=tenant_id, scopes=wanted, created_by=created_by, rotated_from=rotated_from
            ),
            source="gateway",
            tenant_id=tenant_id,
            occurred_at=now,
        ),
    )
    return row, token


def find_key(session: Session, key_id: str, *, tenant_id: str | None) -> ApiKeyRow:
    """The key ``key_id``; NOT_FOUND when it does not exist or belongs to another tenant than ``tenant_id``."""
    row = session.get(ApiKeyRow, key_id) if key_id else None
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        raise NotFound("no such API key: check key_id", reason=Reason.API_KEY_NOT_FOUND)
    return row


def list_keys(session: Session, tenant_id: str, *, include_inactive: bool, now: datetime) -> list[ApiKeyRow]:
    """The tenant's keys, newest first (without those inactive at ``now`` unless ``include_inactive``)."""
    rows = session.scalars(
        select(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant_id).order_by(ApiKeyRow.created_at.desc())
    ).all()
    return [row for row in rows if include_inactive or key_state(row, now) == "active"]


def _revoked_event(row: ApiKeyRow, by: str, effective_at: datetime, now: datetime) -> events_pb2.Event:
    return make_event(
        events_pb2.ApiKeyRevoked(
            key_id=row.id, tenant_id=row.tenant_id, revoked_by=by, effective_at=to_timestamp(effective_at)
        ),
        source="gateway",
        tenant_id=row.tenant_id,
        occurred_at=now,
    )


def revoke_key(session: Session, row: ApiKeyRow, *, by: str, now: datetime) -> ApiKeyRow:
    """Revoke at ``now`` (idempotent: a revoked key stays revoked and no second event is written)."""
    if row.revoked_at is not None:
        return row
    row.revoked_at = now
    enqueue(session, _revoked_event(row, by, now, now))
    return row


def rotate_key(
    session: Session, row: ApiKeyRow, *, grace_s: int, by: str, env: str, pepper: bytes, now: datetime
) -> tuple[ApiKeyRow, str, ApiKeyRow]:
    """Issue a replacement with the same scopes; the old key stops ``now`` or at the end of ``grace_s``."""
    if not 0 <= grace_s <= MAX_GRACE_S:
        raise InvalidArgument(f"grace_seconds must be between 0 and {MAX_GRACE_S}")
    if key_state(row, now) != "active":
        raise FailedPrecondition(
            "only an active key can be rotated; create a new key instead", reason=Reason.API_KEY_NOT_ACTIVE
        )
    remaining_ttl = 0
    if row.expires_at is not None:
        remaining_ttl = max(1, int((row.expires_at - now).total_seconds()))
    new_row, token = create_key(
        session,
        tenant_id=row.tenant_id,
        name=row.name,
        scopes=row.scopes.split(),
        ttl_s=remaining_ttl,
        env=env,
        created_by=by,
        pepper=pepper,
        now=now,
        rotated_from=row.id,
    )
    if grace_s == 0:
        revoke_key(session, row, by=by, now=now)
    else:
        stop_at = now + timedelta(seconds=grace_s)
        if row.expires_at is None or row.expires_at > stop_at:
            row.expires_at = stop_at
        enqueue(session, _revoked_event(row, by, stop_at, now))
    return new_row, token, row
