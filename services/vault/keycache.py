"""In-memory cache of unwrapped DEKs, so reads do not need a Transit round trip each time.

Bounded in size (least recently used entries go first) and in age (an entry older than ``max_age_s``
since it was unwrapped misses and is dropped), so a stolen process image or a lingering key after an
erase holds as little as possible. Erasing a subject evicts its key; shredding a tenant evicts all of
the tenant's keys. While Transit is down, cached keys keep serving until they age out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.chassis.clock import SYSTEM_CLOCK, Clock

V = TypeVar("V")

__all__ = ["DekCache"]


@dataclass(frozen=True, slots=True)
class _Entry(Generic[V]):
    tenant_id: str
    sealer: V
    stored_at: float


class DekCache(Generic[V]):
    """key_id -> (tenant_id, V) for Sealers or blind indexes: LRU- and age-bounded, thread-safe, counted."""

    def __init__(
        self,
        max_entries: int = 10_000,
        max_age_s: float = 900.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key_id: str, *, tenant_id: str | None = None) -> V | None:
        """The cached Sealer for ``key_id``, or None if absent or expired.

        Passing ``tenant_id`` makes an entry stored for another tenant miss too (defence in depth against
        a key id reaching the wrong tenant's code path).
        """
        with self._lock:
            entry = self._entries.get(key_id)
            if entry is not None and self.clock.monotonic() - entry.stored_at >= self.max_age_s:
                del self._entries[key_id]
                entry = None
            if entry is None or (tenant_id is not None and entry.tenant_id != tenant_id):
                self.misses += 1
                return None
            self._entries.move_to_end(key_id)
            self.hits += 1
            return entry.sealer

    def put(self, tenant_id: str, key_id: str, sealer: V) -> None:
        """Cache ``sealer`` for ``key_id``; its age starts now. Evicts the least recently used beyond the bound."""
        with self._lock:
            self._entries[key_id] = _Entry(tenant_id, sealer, self.clock.monotonic())
            self._entries.move_to_end(key_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def evict(self, key_id: str) -> None:
        """Forget one key (a subject was erased or its DEK destroyed)."""
        with self._lock:
            self._entries.pop(key_id, None)

    def evict_tenant(self, tenant_id: str) -> int:
        """Forget every key of a tenant (the tenant was shredded); returns how many were dropped."""
        with self._lock:
            doomed = [key_id for key_id, entry in self._entries.items() if entry.tenant_id == tenant_id]
            for key_id in doomed:
                del self._entries[key_id]
            return len(doomed)

    def clear(self) -> None:
        """Forget everything (e.g. on shutdown)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        """Entries held, expired ones included until a ``get`` drops them."""
        with self._lock:
            return len(self._entries)

    def __contains__(self, key_id: object) -> bool:
        """Is a live (unexpired) entry cached? Does not touch the counters or the LRU order."""
        with self._lock:
            entry = self._entries.get(key_id) if isinstance(key_id, str) else None
            return entry is not None and self.clock.monotonic() - entry.stored_at < self.max_age_s
