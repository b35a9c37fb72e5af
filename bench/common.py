"""Shared benchmark helpers: latency statistics, a load generator that runs in its own process, tables."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BenchDatabases",
    "Figures",
    "VaultProcess",
    "database_kinds",
    "on_each_database",
    "print_table",
    "run_benchmark",
    "run_in_client_process",
    "save_results",
    "timed_calls",
]

POSTGRES_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


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


def run_in_client_process(target: Callable[..., Awaitable[Any]], *args: Any, timeout: float = 600) -> Any:
    """Run an async load generator in a separate process so it does not share the server's GIL."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(target, args, queue))
    process.start()
    result = queue.get(timeout=timeout)
    process.join(60)
    return result


def _postgres_problem() -> str | None:
    """Why PostgreSQL at ``POSTGRES_ADMIN_URL`` cannot be used, or None."""
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
        finally:
            engine.dispose()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def database_kinds() -> list[str]:
    """The databases to run on: ``BENCH_DATABASES`` (default ``sqlite,postgres``), PostgreSQL dropped with a
    message when it is unreachable (benchmarks are not CI: the run goes on with SQLite)."""
    kinds = [k.strip() for k in os.environ.get("BENCH_DATABASES", "sqlite,postgres").split(",") if k.strip()]
    if "postgres" in kinds:
        problem = _postgres_problem()
        if problem is not None:
            print(f"\n*** PostgreSQL not reachable at {POSTGRES_ADMIN_URL} ({problem}): SQLite only ***\n")
            kinds.remove("postgres")
    return kinds


@dataclass
class BenchDatabases:
    """Fresh databases of one kind for one benchmark run, dropped afterwards (``with`` block).

    SQLite: files in a temporary folder. PostgreSQL: ``CREATE DATABASE steward_bench_<pid>_<random>_<name>`` on
    the server at ``POSTGRES_ADMIN_URL`` (``BENCH_POSTGRES_URL``), ``DROP DATABASE ... WITH (FORCE)`` at the end.
    """

    kind: str
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="steward-bench-db-")))
    created: list[str] = field(default_factory=list)
    tag: str = field(default_factory=lambda: f"steward_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}")

    @property
    def label(self) -> str:
        return "PostgreSQL" if self.kind == "postgres" else "SQLite"

    def url(self, name: str) -> str:
        """The URL of a new, empty database called ``name`` within this run."""
        if self.kind == "sqlite":
            return f"sqlite:///{self.workdir / name}.db"
        import sqlalchemy as sa

        database = f"{self.tag}_{name}"
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
        finally:
            admin.dispose()
        self.created.append(database)
        return sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=database).render_as_string(hide_password=False)

    def __enter__(self) -> BenchDatabases:
        return self

    def __exit__(self, *_exc: object) -> None:
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)
        if not self.created:
            return
        import sqlalchemy as sa

        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                for database in self.created:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        finally:
            admin.dispose()
        self.created.clear()


async def on_each_database(
    name: str, run_on: Callable[[BenchDatabases, Any], Awaitable[dict[str, Any]]], payload: dict[str, Any]
) -> dict[str, Any]:
    """``run_on(databases, openbao)`` once per database kind (one real OpenBao for all), figures under the kind's
    key in ``payload``, saved as ``bench/results/<name>.json``; returns ``payload``."""
    from tests.plugins.infra import OpenBaoDev

    bao = OpenBaoDev()
    bao.start()
    try:
        for kind in database_kinds():
            with BenchDatabases(kind) as dbs:
                payload[kind] = await run_on(dbs, bao)
    finally:
        bao.stop()
    print(f"\nresults: {save_results(name, payload)}")
    return payload


def _serve_vault(settings: dict[str, Any], ports: Any) -> None:
    """Child process: one vault until terminated."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    async def serve() -> None:
        from services.vault.main import create_server
        from services.vault.settings import VaultSettings

        _app, port = await create_server(VaultSettings(**settings), port=0)
        ports.put(port)
        await asyncio.Event().wait()

    asyncio.run(serve())


class VaultProcess:
    """A vault in a child process (``VaultSettings`` fields as a dict), and its resident memory."""

    def __init__(self, settings: dict[str, Any]) -> None:
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        self.process = context.Process(target=_serve_vault, args=(settings, queue), daemon=True)
        self.process.start()
        self.port = int(queue.get(timeout=300))

    def memory_kb(self, name: str = "VmRSS") -> int:
        """``VmRSS`` (now) or ``VmHWM`` (peak so far) of the vault process, in kB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time the vault process has used so far (less noisy than wall time on a busy machine)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Terminate the child this benchmark started (by its own handle)."""
        self.process.terminate()
        self.process.join(30)


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
