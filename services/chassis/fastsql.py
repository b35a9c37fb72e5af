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
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["execute_compiled", "insert_rows", "select_rows"]


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool
    row_type: Any = None  # a namedtuple of the result columns (SELECT plans)
    results: tuple[Callable[[Any], Any] | None, ...] = ()


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
        columns = compiled._result_columns  # (key, name, objects, type) per selected column; empty for DML
        row_type = namedtuple("Row", [column[0] for column in columns]) if columns else None  # type: ignore[misc]
        results = tuple(column[3]._cached_result_processor(dialect, None) for column in columns)
        plan = _Plan(str(compiled), names, processors, bool(compiled.positional), row_type, results)
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


def select_rows(
    connection: Connection, key: str, build: Callable[[], ClauseElement], params: Mapping[str, Any]
) -> list[Any]:
    """Rows of the SELECT ``build()`` returns (compiled once per dialect under ``key``) as named tuples.

    Values go through the column types' result processors, as the ORM would give them. This reads the
    database directly: a caller whose session may hold unflushed ORM changes flushes first.
    """
    plan = _plan(connection, key, build)
    raw = connection.exec_driver_sql(plan.sql, _params(plan, params)).fetchall()  # type: ignore[arg-type]
    make, results = plan.row_type._make, plan.results
    if not any(results):
        return [make(row) for row in raw]
    return [make(v if proc is None else proc(v) for v, proc in zip(row, results, strict=True)) for row in raw]
