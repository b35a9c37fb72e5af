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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

__all__ = ["Base", "Database", "make_engine"]

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


class Database:
    """An engine, a session factory and a small thread pool for transactions."""

    def __init__(self, url: str, *, workers: int = 8) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=workers)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="db")

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite backend."""
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on any error."""
        with self.sessions() as session, session.begin():
            yield session

    async def run(self, work: Callable[[Session], T]) -> T:
        """Run ``work(session)`` in one transaction on a worker thread (trace context preserved)."""

        def unit() -> T:
            with self.transaction() as session:
                return work(session)

        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(ctx.run, unit))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (no transaction) on the same pool."""
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(ctx.run, fn, *args))

    def close(self) -> None:
        """Release connections and threads."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.engine.dispose()
