"""The DEK cache: age bound, LRU bound, eviction, counters (services/vault/keycache.py)."""

from __future__ import annotations

from services.chassis.clock import ManualClock
from services.vault.keycache import DekCache
from services.vault.sealing import Sealer, new_key


def sealer() -> Sealer:
    return Sealer(new_key())


def test_hit_returns_the_same_sealer_and_counts() -> None:
    cache = DekCache()
    s = sealer()
    cache.put("t1", "k1", s)
    assert cache.get("k1") is s
    assert cache.get("nope") is None
    assert (cache.hits, cache.misses) == (1, 1)


def test_entries_expire_after_max_age_and_are_dropped() -> None:
    clock = ManualClock(monotonic_start=0.0)
    cache = DekCache(max_age_s=900.0, clock=clock)
    cache.put("t1", "k1", sealer())
    clock.advance(899.9)
    assert cache.get("k1") is not None
    clock.advance(0.1)
    assert "k1" not in cache
    assert cache.get("k1") is None
    assert len(cache) == 0
    assert cache.misses == 1


def test_reading_does_not_extend_an_entrys_life() -> None:
    clock = ManualClock(monotonic_start=0.0)
    cache = DekCache(max_age_s=10.0, clock=clock)
    cache.put("t1", "k1", sealer())
    for _ in range(3):
        clock.advance(3.0)
        assert cache.get("k1") is not None
    clock.advance(1.0)
    assert cache.get("k1") is None


def test_least_recently_used_entry_goes_first_beyond_the_bound() -> None:
    cache = DekCache(max_entries=3)
    for key_id in ("a", "b", "c"):
        cache.put("t1", key_id, sealer())
    assert cache.get("a") is not None  # "b" is now the least recently used
    cache.put("t1", "d", sealer())
    assert len(cache) == 3
    assert "b" not in cache
    assert all(k in cache for k in ("a", "c", "d"))


def test_evict_and_evict_tenant_and_clear() -> None:
    cache = DekCache()
    cache.put("t1", "k1", sealer())
    cache.put("t1", "k2", sealer())
    cache.put("t2", "k3", sealer())
    cache.evict("k1")
    cache.evict("missing")
    assert "k1" not in cache
    assert cache.evict_tenant("t1") == 1
    assert "k2" not in cache and "k3" in cache
    cache.clear()
    assert len(cache) == 0


def test_tenant_check_makes_another_tenants_key_miss() -> None:
    cache = DekCache()
    cache.put("t1", "k1", sealer())
    assert cache.get("k1", tenant_id="t2") is None
    assert cache.get("k1", tenant_id="t1") is not None


def test_putting_again_replaces_and_restarts_the_age() -> None:
    clock = ManualClock(monotonic_start=0.0)
    cache = DekCache(max_age_s=10.0, clock=clock)
    first, second = sealer(), sealer()
    cache.put("t1", "k1", first)
    clock.advance(8.0)
    cache.put("t1", "k1", second)
    clock.advance(7.0)
    assert cache.get("k1") is second
