"""Hot-path SQL without per-statement SQLAlchemy overhead.

SQLAlchemy compiles and caches statements, but each ``execute`` still costs tens of microseconds of
Python before the driver is reached — more than SQLite itself spends on a small insert. For the few
statements every request runs (record, audit and outbox inserts; the audit-head update) this module
compiles the statement once per dialect, applies the column types' own bind processors, and calls
the driver through ``exec_driver_sql``. Types and SQL stay SQLAlchemy's; only the per-call
bookkeeping is skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["execute_compiled", "insert_rows"]


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool


_plans: dict[tuple[str, object], _Plan] = {}
_lock = threading.Lock()


def _plan(connection: Connection, key: object, build: Callable[[], ClauseElement]) -> _Plan:
    dialect = connection.dialect
    cache_key = (dialect.name, key)
    plan = _plans.get(cache_key)
    if plan is None:
        compiled = cast(SQLCompiler, build().compile(dialect=dialect))
        names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.binds)
        processors = tuple(compiled.binds[name].type._cached_bind_processor(dialect) for name in names)
        plan = _Plan(str(compiled), names, processors, bool(compiled.positional))
        with _lock:
            _plans[cache_key] = plan
    return plan


def _params(plan: _Plan, row: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
    values = [
        row[name] if proc is None else proc(row[name]) for name, proc in zip(plan.names, plan.processors, strict=True)
    ]
    return tuple(values) if plan.positional else dict(zip(plan.names, values, strict=True))


def insert_rows(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """``INSERT`` every row (each a dict with a value for every column named in the first row)."""
    if not rows:
        return
    columns = tuple(rows[0])
    plan = _plan(
        connection,
        ("insert", table.name, columns),
        lambda: insert(table).values({name: bindparam(name) for name in columns}),
    )
    missing = [name for name in plan.names if name not in rows[0]]
    if missing:
        raise ValueError(f"insert_rows into {table.name}: rows lack columns {missing}")
    connection.exec_driver_sql(plan.sql, [_params(plan, row) for row in rows])  # type: ignore[arg-type]


def execute_compiled(
    connection: Connection, key: str, build: Callable[[], ClauseElement], params: Mapping[str, Any]
) -> None:
    """Run the statement ``build()`` returns (compiled once per dialect under ``key``) with ``params``.

    Bind parameters must be named with ``bindparam(name)`` so ``params`` can supply them.
    """
    plan = _plan(connection, key, build)
    connection.exec_driver_sql(plan.sql, _params(plan, params))  # type: ignore[arg-type]
