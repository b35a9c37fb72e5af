"""``python -m bench`` (``make bench``): every benchmark, one after the other, then the headline figures of the
vault, gateway and scale benchmarks side by side per database.

The vault, gateway and scale benchmarks run on SQLite and on PostgreSQL (``BENCH_DATABASES``, default
``sqlite,postgres``; PostgreSQL at ``BENCH_POSTGRES_URL``, default the local server's ``test`` database, a fresh
database per run, dropped afterwards; skipped with a message when unreachable). The scale benchmark compares
10,000 with 100,000 records; ``BENCH_SCALE=1`` makes it 1,000,000 (long: see bench/scale_bench.py).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from typing import Any

BENCHMARKS = [
    "bench.vault_bench",
    "bench.gateway_bench",
    "bench.scale_bench",
    "bench.tenant_export_bench",
    "bench.dsr_bench",
    "bench.notify_bench",
]


def _summary(results: dict[str, Any]) -> None:
    """The headline figures per database, one column each."""
    kinds = [k for k in ("sqlite", "postgres") if any(k in r for r in results.values() if isinstance(r, dict))]
    if not kinds:
        return
    lines: list[tuple[str, list[str]]] = []

    def add(label: str, module: str, pick: Any) -> None:
        values = []
        for kind in kinds:
            try:
                values.append(pick(results[module][kind]))
            except (KeyError, TypeError, ZeroDivisionError, StopIteration):
                values.append("-")
        lines.append((label, values))

    def row(data: dict[str, Any], prefix: str) -> dict[str, Any]:
        return next(r for r in data["rows"] if r["name"].startswith(prefix))

    add(
        "vault PutRecord cached, ops/s",
        "bench.vault_bench",
        lambda d: f"{row(d, 'PutRecord, existing')['ops_per_s']:.0f}",
    )
    add("vault PutRecord / naive", "bench.vault_bench", lambda d: f"{d['checks']['putrecord_vs_naive']:.1f}x")
    add("vault GetRecord cached, ops/s", "bench.vault_bench", lambda d: f"{row(d, 'GetRecord')['ops_per_s']:.0f}")
    add(
        "vault PutRecords x500, records/s",
        "bench.vault_bench",
        lambda d: f"{d['checks']['putrecords_records_per_s']:.0f}",
    )
    gateway_figures = (
        ("gateway->vault / direct", "throughput_ratio", lambda v: f"{v * 100:.0f}%"),
        ("gateway->echo / bare echo", "gateway_echo_over_echo", lambda v: f"{v:.2f}"),
        ("vault direct / bare echo", "vault_over_echo", lambda v: f"{v:.2f}"),
        ("gateway p99 added, 8 callers, ms", "8_callers_p99_added_ms", lambda v: f"{v:+.1f}"),
        ("gateway p99 added, 32 callers, ms", "p99_added_ms", lambda v: f"{v:+.1f}"),
    )
    for method in ("PutRecord", "GetRecord"):
        for label, key, fmt in gateway_figures:
            add(
                f"{label}, {method}",
                "bench.gateway_bench",
                lambda d, k=f"{method}_{key}", f=fmt: f(d["checks"][k]),
            )
    add(
        "scale: figures within 20% (B vs A)",
        "bench.scale_bench",
        lambda d: f"{sum(c['met'] for c in d['checks'].values())}/{len(d['checks'])}",
    )
    add("scale: export peak RSS, MB", "bench.scale_bench", lambda d: f"{d['export']['vm_hwm_kb'] / 1024:.0f}")
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    print("\n=== Summary per database (this run; read ratios, the machine may be shared) ===")
    print(f"{'figure':<48}" + "".join(f"{names[k]:>14}" for k in kinds))
    for label, values in lines:
        print(f"{label:<48}" + "".join(f"{v:>14}" for v in values))


def main() -> None:
    """Run each benchmark module that exists."""
    results: dict[str, Any] = {}
    for name in BENCHMARKS:
        if importlib.util.find_spec(name) is None:
            print(f"(skipping {name}: not present)")
            continue
        module = importlib.import_module(name)
        results[name] = asyncio.run(module.run())
    _summary(results)


if __name__ == "__main__":
    main()
