"""The tenant key ring: DEKs generated locally, wrapped by the tenant's Transit key, cached in memory.

Every Transit call is batched: creating N subjects wraps N DEKs in one call, and loading the keys
of many records unwraps every cache miss in one call. Plaintext DEKs live only in the bounded,
time-limited :class:`~services.vault.keycache.DekCache`; the database holds them wrapped, with the
tenant id and key id bound as associated data so a wrapped key cannot be moved to another tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.chassis.errors import FailedPrecondition, Reason
from services.chassis.ids import new_id
from services.chassis.transit import KeyUnavailable, TransitClient
from services.vault.blind_index import BlindIndex
from services.vault.keycache import DekCache
from services.vault.models import DataKey, TenantVault
from services.vault.sealing import Sealer, key_aad, new_key

__all__ = ["TRANSIT_BATCH", "KeyRing", "NewKey"]

# Items per Transit batch call. OpenBao refuses request bodies with more than 1000 JSON strings ("refused JSON
# input due to high complexity", its listener's default since GHSA-g46h-2rq9-gw5m); an item with associated data
# is 4 strings, so 249 is the most one call can carry. Larger batches become ceil(n / 200) calls: still O(1)
# per request, since a request holds at most 500 records.
TRANSIT_BATCH = 200

T = TypeVar("T")
R = TypeVar("R")


def _in_batches(call: Callable[[str, Sequence[T]], list[R]], tenant_id: str, items: Sequence[T]) -> list[R]:
    out: list[R] = []
    for start in range(0, len(items), TRANSIT_BATCH):
        out.extend(call(tenant_id, items[start : start + TRANSIT_BATCH]))
    return out


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly generated DEK: its id, its sealer and the raw key (only until it is wrapped and cached)."""

    key_id: str
    sealer: Sealer
    raw: bytes


class KeyRing:
    """Creates, wraps, unwraps and caches DEKs for the vault's domain code (runs in worker threads)."""

    def __init__(
        self, transit: TransitClient, cache: DekCache[Sealer], blind_cache: DekCache[BlindIndex] | None = None
    ) -> None:
        self.transit = transit
        self.cache = cache
        # Blind-index objects keyed by their root key id, with the same bounds and max age as DEKs.
        self.blind_cache: DekCache[BlindIndex] = blind_cache or DekCache(
            max_entries=cache.max_entries, max_age_s=cache.max_age_s, clock=cache.clock
        )

    def blind_index(self, session: Session, tenant_id: str, key_id: str) -> BlindIndex:
        """The tenant's blind index; its root key is unwrapped once and cached like a DEK."""
        index = self.blind_cache.get(key_id)
        if index is None:
            raw = self._unwrap_raw(session, tenant_id, [key_id])[key_id]
            index = self.remember_blind_index(tenant_id, key_id, raw)
        return index

    def remember_blind_index(self, tenant_id: str, key_id: str, raw: bytes) -> BlindIndex:
        """Cache a blind index built from a freshly created root key."""
        index = BlindIndex(raw)
        self.blind_cache.put(tenant_id, key_id, index)
        return index

    def _unwrap_raw(self, session: Session, tenant_id: str, key_ids: Sequence[str]) -> dict[str, bytes]:
        rows = session.execute(
            select(DataKey.id, DataKey.wrapped).where(DataKey.tenant_id == tenant_id, DataKey.id.in_(key_ids))
        ).all()
        if len(rows) != len(set(key_ids)):
            raise FailedPrecondition(
                "a data key is missing for this tenant; call on-call", reason=Reason.KEY_UNAVAILABLE
            )
        try:
            raws = _in_batches(
                self.transit.unwrap, tenant_id, [(wrapped, key_aad(tenant_id, key_id)) for key_id, wrapped in rows]
            )
        except KeyUnavailable:
            raise FailedPrecondition(
                "this tenant's key can no longer decrypt its data keys", reason=Reason.KEY_UNAVAILABLE
            ) from None
        return {key_id: raw for (key_id, _), raw in zip(rows, raws, strict=True)}

    def create_keys(
        self, session: Session, tenant_id: str, kek_version: int, purposes: Sequence[str], *, now: datetime
    ) -> list[NewKey]:
        """Generate one DEK per purpose, wrap them all in one Transit call, store them wrapped (created ``now``),
        cache them."""
        if not purposes:
            return []
        fresh = [NewKey(new_id(), Sealer(raw), raw) for raw in (new_key() for _ in purposes)]
        wrapped = _in_batches(
            self.transit.wrap, tenant_id, [(key.raw, key_aad(tenant_id, key.key_id)) for key in fresh]
        )
        session.add_all(
            DataKey(
                id=key.key_id,
                tenant_id=tenant_id,
                purpose=purpose,
                wrapped=blob,
                kek_version=_version_of(blob, kek_version),
                encryptions=0,
                created_at=now,
            )
            for key, purpose, blob in zip(fresh, purposes, wrapped, strict=True)
        )
        for key in fresh:
            self.cache.put(tenant_id, key.key_id, key.sealer)
        return fresh

    def sealers(self, session: Session, tenant_id: str, key_ids: Iterable[str]) -> dict[str, Sealer]:
        """Sealers for ``key_ids``: cache hits cost nothing, all misses are unwrapped in one Transit call."""
        found: dict[str, Sealer] = {}
        missing: list[str] = []
        for key_id in dict.fromkeys(key_ids):
            sealer = self.cache.get(key_id)
            if sealer is None:
                missing.append(key_id)
            else:
                found[key_id] = sealer
        if not missing:
            return found
        for key_id, raw in self._unwrap_raw(session, tenant_id, missing).items():
            sealer = Sealer(raw)
            self.cache.put(tenant_id, key_id, sealer)
            found[key_id] = sealer
        return found

    def sealer(self, session: Session, tenant_id: str, key_id: str) -> Sealer:
        """One sealer (see :meth:`sealers`)."""
        return self.sealers(session, tenant_id, [key_id])[key_id]

    def rewrap(self, tenant_id: str, items: Sequence[tuple[str, bytes]]) -> list[str]:
        """Rewrap ``(wrapped, associated_data)`` pairs to the latest key version (Transit-sized batches)."""
        return _in_batches(self.transit.rewrap, tenant_id, items)

    def forget(self, key_ids: Iterable[str]) -> None:
        """Drop plaintext keys from memory (erasure)."""
        for key_id in key_ids:
            self.cache.evict(key_id)

    def forget_tenant(self, tenant: TenantVault) -> None:
        """Drop every plaintext key of a tenant from memory (shred)."""
        self.cache.evict_tenant(tenant.tenant_id)
        self.blind_cache.evict_tenant(tenant.tenant_id)


def _version_of(wrapped: str, default: int) -> int:
    # Transit ciphertexts look like "vault:v3:..."; the version says which KEK version wrapped the DEK.
    parts = wrapped.split(":", 2)
    if len(parts) == 3 and parts[1].startswith("v") and parts[1][1:].isdigit():
        return int(parts[1][1:])
    return default
