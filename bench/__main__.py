"""``python -m bench``: every benchmark, one after the other."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util

BENCHMARKS = [
    "bench.vault_bench",
    "bench.gateway_bench",
    "bench.tenant_export_bench",
    "bench.dsr_bench",
    "bench.notify_bench",
]


def main() -> None:
    """Run each benchmark module that exists."""
    for name in BENCHMARKS:
        if importlib.util.find_spec(name) is None:
            print(f"(skipping {name}: not present)")
            continue
        module = importlib.import_module(name)
        asyncio.run(module.run())


if __name__ == "__main__":
    main()
