"""Shared benchmark helpers: latency statistics, a load generator that runs in its own process, tables."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Figures", "print_table", "run_benchmark", "run_in_client_process", "save_results", "timed_calls"]


@dataclass
class Figures:
    """Throughput and latency of one phase."""

    name: str
    ops: int
    seconds: float
    p50_ms: float
    p99_ms: float
    items_per_op: int = 1
    transit_calls: int | None = None

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def items_per_s(self) -> float:
        return self.ops_per_s * self.items_per_op

    def row(self) -> dict[str, Any]:
        data = asdict(self)
        data["ops_per_s"] = round(self.ops_per_s, 1)
        data["items_per_s"] = round(self.items_per_s, 1)
        return data


def summarise(name: str, latencies: list[float], seconds: float, items_per_op: int = 1) -> Figures:
    """Figures from per-call latencies (seconds) and the wall time of the phase."""
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0
    return Figures(
        name, len(latencies), seconds, statistics.median(ordered) * 1000 if ordered else 0.0, p99 * 1000, items_per_op
    )


async def timed_calls(
    call: Callable[[int], Awaitable[object]], total: int, concurrency: int
) -> tuple[list[float], float]:
    """Run ``call(i)`` for i in range(total) with ``concurrency`` workers; (latencies, wall seconds)."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def _child(target: Callable[..., Any], args: tuple[Any, ...], queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(asyncio.run(target(*args)))


def run_in_client_process(target: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run an async load generator in a separate process so it does not share the server's GIL."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(target, args, queue))
    process.start()
    result = queue.get(timeout=600)
    process.join(60)
    return result


def print_table(title: str, rows: list[Figures]) -> None:
    """A plain table for terminals and closing notes."""
    print(f"\n{title}")
    header = f"{'phase':<44}{'ops':>8}{'ops/s':>11}{'items/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'transit':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        transit = "" if row.transit_calls is None else str(row.transit_calls)
        print(
            f"{row.name:<44}{row.ops:>8}{row.ops_per_s:>11.1f}{row.items_per_s:>11.1f}{row.p50_ms:>9.2f}"
            f"{row.p99_ms:>9.2f}{transit:>9}"
        )


def save_results(name: str, payload: dict[str, Any]) -> Path:
    """Write results as JSON under bench/results/ (ignored by git)."""
    folder = Path(__file__).parent / "results"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def run_benchmark(run: Callable[[], Awaitable[Any]]) -> None:
    """A benchmark module's ``main``: import from the repository root, run, say how long it took."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    started = time.perf_counter()
    asyncio.run(run())
    print(f"(took {time.perf_counter() - started:.0f} s)")
