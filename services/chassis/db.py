"""Database access: one engine per service, short transactions run off the event loop.

Services keep their domain code synchronous (SQLAlchemy 2.0 ``Session``) and run each unit of work
in a worker thread with :meth:`Database.run`, so a gRPC handler makes one thread hop per
transaction rather than one per statement. ``hide_parameters=True`` keeps bound values (which may be
ciphertext or identifiers) out of SQLAlchemy's error messages and logs.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from services.chassis.errors import DeadlineExceeded
from services.chassis.fastsql import watch_staging

__all__ = ["Base", "Database", "GroupCommitWriter", "make_engine"]

T = TypeVar("T")


class Base(DeclarativeBase):
    """Declarative base for chassis tables (outbox, inbox); services declare their own bases."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (see _sqlite_begin_immediate).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    # Take SQLite's write lock at BEGIN: a deferred transaction that reads and then writes fails with
    # SQLITE_BUSY_SNAPSHOT (no waiting) when another writer committed in between. Steward's
    # transactions nearly all write (audit, outbox), so serialising them up front costs little.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> Engine:
    """An engine for SQLite (embedded default) or PostgreSQL (production)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            hide_parameters=True,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 10},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_engine(
        url, hide_parameters=True, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


def _check_deadline(deadline: float | None) -> None:
    # The caller has given up: committing now would store a write it will report as failed (and retry).
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded("the call's deadline passed before its transaction committed; nothing was written")


class _Waiter:
    """Whether the caller still waits for a unit: not once its deadline has passed or its task was cancelled
    (the client went away, or the server's own deadline cancelled the RPC a little after the client's)."""

    __slots__ = ("deadline", "gone")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.gone = False

    def check(self) -> None:
        if self.gone:
            raise DeadlineExceeded("the call was cancelled before its transaction committed; nothing was written")
        _check_deadline(self.deadline)


def _before_and_after(work: Callable[[Session], T], waiter: _Waiter | None) -> Callable[[Session], T]:
    """``work`` refused when its caller stopped waiting by the time it starts (it may have queued) or before it
    commits."""
    if waiter is None:
        return work

    def guarded(session: Session) -> T:
        waiter.check()
        result = work(session)
        waiter.check()
        return result

    return guarded


@dataclass
class _Unit:
    work: Callable[[Session], Any]
    context: contextvars.Context
    future: asyncio.Future[Any]
    isolated: bool = False
    lock_order: str = ""
    result: Any = None
    error: BaseException | None = None


class GroupCommitWriter:
    """One writer thread that commits queued units of work together (SQLite; PostgreSQL when asked).

    SQLite allows one writer at a time, so concurrent transactions only queue. Here they queue in
    memory instead: the writer takes everything waiting (up to ``max_batch``) and runs the units one
    after the other in one transaction with one commit, one thread hop and one event-loop wake-up.
    On PostgreSQL the same holds for writes that take one row lock first (the vault's tenant row, which
    orders its audit chain): one transaction each would queue on that lock and commit (fsync) one at a
    time; a batch takes the lock once and commits once.

    Optimistically first, without savepoints (they cost a quarter of the throughput). If any unit
    raises, the whole transaction rolls back and the batch runs again with a SAVEPOINT per unit, so
    the failing unit gets its own exception and the others still commit. Units therefore must not
    have external effects that are wrong to repeat; a unit that does (rotating a key) is submitted
    ``isolated`` and always runs in a transaction of its own.

    On PostgreSQL a batch holds the row locks its units took until it commits, so two writers (two
    replicas) whose batches lock the same rows in opposite orders would deadlock. A unit submitted with a
    ``lock_order`` (the vault passes the tenant whose row it locks first) runs in that order within its
    batch, so every batch takes those locks in the same order; units of one ``lock_order`` keep the order
    they were submitted in.
    """

    def __init__(self, database: Database, max_batch: int = 64) -> None:
        self.database = database
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Unit | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="db-writer", daemon=True)
        self._started = False
        self._start_lock = threading.Lock()
        self.batches = 0
        self.units = 0
        self.replays = 0

    def submit(
        self,
        work: Callable[[Session], T],
        *,
        isolated: bool = False,
        waiter: _Waiter | None = None,
        lock_order: str = "",
    ) -> asyncio.Future[T]:
        """Queue ``work``; the future resolves on the caller's loop after the batch commits.

        With a ``waiter`` the unit fails with :class:`DeadlineExceeded`, writing nothing, when its caller has
        stopped waiting (deadline passed, or cancelled) as it starts or once its work is done: a unit that
        raises makes the batch run again with a savepoint per unit, so the others still commit.
        """
        work = _before_and_after(work, waiter)
        if not self._started:
            with self._start_lock:
                if not self._started:
                    self._thread.start()
                    self._started = True
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put(_Unit(work, contextvars.copy_context(), future, isolated, lock_order))
        return future

    def stop(self) -> None:
        """Finish queued work and end the thread."""
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            carry: _Unit | None = None
            while len(batch) < self.max_batch and not first.isolated:
                try:
                    unit = self._queue.get_nowait()
                except queue.Empty:
                    break
                if unit is None:
                    self._queue.put(None)
                    break
                if unit.isolated:
                    carry = unit
                    break
                batch.append(unit)
            self._run_batch(batch)
            if carry is not None:
                self._run_batch([carry])

    def _run_batch(self, batch: list[_Unit]) -> None:
        batch.sort(key=_lock_order)  # stable: units of one lock order keep their order
        if len(batch) == 1 or not self._run_optimistically(batch):
            self._run_with_savepoints(batch)
        self._resolve(batch)

    def _run_optimistically(self, batch: list[_Unit]) -> bool:
        try:
            with self.database.transaction() as session:
                for unit in batch:
                    unit.result = unit.context.run(unit.work, session)
            return True
        except Exception:
            for unit in batch:
                unit.result = None
            self.replays += 1
            return False

    def _run_with_savepoints(self, batch: list[_Unit]) -> None:
        try:
            with self.database.transaction() as session:
                if len(batch) == 1:
                    unit = batch[0]
                    unit.result = unit.context.run(unit.work, session)
                else:
                    for unit in batch:
                        try:
                            with session.begin_nested():
                                unit.result = unit.context.run(unit.work, session)
                        except Exception as exc:
                            # Rolling back the savepoint expires exactly the objects this unit changed
                            # (SQLAlchemy tracks them per savepoint). Expiring everything would also expire
                            # the rows earlier units return, unreadable once the session closes.
                            unit.error = exc
        except Exception as exc:
            for unit in batch:
                if unit.error is None:
                    unit.error = exc

    def _resolve(self, batch: list[_Unit]) -> None:
        self.batches += 1
        self.units += len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[_Unit]] = {}
        for unit in batch:
            by_loop.setdefault(unit.future.get_loop(), []).append(unit)
        for loop, units in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, units)
            except RuntimeError:
                pass  # that loop has closed; nobody is waiting any more


def _lock_order(unit: _Unit) -> str:
    return unit.lock_order


def _settle(units: list[_Unit]) -> None:
    for unit in units:
        if unit.future.done():
            continue
        if unit.error is not None:
            unit.future.set_exception(unit.error)
        else:
            unit.future.set_result(unit.result)


class Database:
    """An engine, a session factory, a thread pool, and a group-commit writer (SQLite; PostgreSQL with
    ``group_commit``).

    The writer holds one pooled connection while it runs a batch; :meth:`call` and the units that do not
    join it (``isolated`` ones on PostgreSQL) use the rest of the pool.
    """

    def __init__(self, url: str, *, workers: int = 8, group_commit: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=workers)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        watch_staging(self.sessions)  # hot-path rows (audit, outbox) staged per transaction: see fastsql
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="db")
        self._writer = GroupCommitWriter(self) if self.is_sqlite or group_commit else None

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite backend."""
        return self.engine.dialect.name == "sqlite"

    @property
    def group_commits(self) -> bool:
        """True when :meth:`run` queues units for the group-commit writer (always on SQLite)."""
        return self._writer is not None

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on any error."""
        with self.sessions() as session, session.begin():
            yield session

    async def run(
        self,
        work: Callable[[Session], T],
        *,
        isolated: bool = False,
        timeout_s: float | None = None,
        lock_order: str = "",
    ) -> T:
        """Run ``work(session)`` in one transaction off the event loop (trace context preserved).

        With group commit (always on SQLite) the unit joins the writer (shared commit; see
        :class:`GroupCommitWriter`, and pass ``isolated=True`` for work whose external effects must not be
        repeated: on SQLite it then has the writer's transaction to itself, on PostgreSQL it runs on the
        thread pool). Otherwise (PostgreSQL) it runs in its own transaction on the thread pool, in parallel
        with others.

        ``timeout_s`` is the caller's remaining time (``context.time_remaining()``): when it has run out, or
        the calling task was cancelled (the client went away, or the server's deadline cancelled the RPC),
        before the unit is submitted, before it starts (after queueing) or before it commits, the unit
        raises :class:`DeadlineExceeded` and nothing is written.

        ``lock_order``: where the unit runs within a group-commit batch (see :class:`GroupCommitWriter`).
        """
        waiter = None
        if timeout_s is not None:
            waiter = _Waiter(time.monotonic() + timeout_s)
            waiter.check()
        try:
            if self._writer is not None and (self.is_sqlite or not isolated):
                return await self._writer.submit(work, isolated=isolated, waiter=waiter, lock_order=lock_order)
            guarded = _before_and_after(work, waiter)

            def unit() -> T:
                with self.transaction() as session:
                    return guarded(session)

            ctx = contextvars.copy_context()
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, functools.partial(ctx.run, unit))
        except asyncio.CancelledError:
            if waiter is not None:  # nobody will see the result: a unit not yet committed is not committed
                waiter.gone = True
            raise

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (no transaction) on the thread pool."""
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(ctx.run, fn, *args))

    def close(self) -> None:
        """Finish queued work, release connections and threads."""
        if self._writer is not None:
            self._writer.stop()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.engine.dispose()
