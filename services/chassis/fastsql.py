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

from sqlalchemy import Connection, Table, bindparam, event, insert
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, sessionmaker
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = [
    "execute_compiled",
    "flush_staged",
    "insert_rows",
    "select_rows",
    "stage_rows",
    "stage_update",
    "watch_staging",
]


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


# Statements staged in a session, run together before the transaction's next ORM statement, ORM flush or
# commit: the rows of many units of one group-commit batch go in one executemany, and an update keyed
# by ``dedupe`` runs once with its last parameters.
_STAGED = "steward.fastsql.staged"
WATCHED = "steward.fastsql.watched"


@dataclass
class _Staged:
    inserts: dict[tuple[str, tuple[str, ...]], tuple[Table, list[Mapping[str, Any]]]]
    updates: dict[object, tuple[str, Callable[[], ClauseElement], Mapping[str, Any]]]


def _staged(session: Session) -> _Staged | None:
    """This transaction's staging area; None (write at once) inside a savepoint, whose rollback must undo
    exactly what its unit wrote."""
    if not session.info.get(WATCHED) or session.in_nested_transaction():
        flush_staged(session)
        return None
    staged: _Staged | None = session.info.get(_STAGED)
    if staged is None:
        staged = session.info[_STAGED] = _Staged({}, {})
    return staged


def watch_staging(sessions: sessionmaker[Any]) -> None:
    """Let sessions of ``sessions`` stage writes: listeners that write staged rows before each ORM statement,
    ORM flush, savepoint and commit, registered once (per session they would cost half a millisecond).
    Sessions from elsewhere write at once."""
    sessions.kw.setdefault("info", {})[WATCHED] = True
    event.listen(sessions, "before_commit", flush_staged)
    event.listen(sessions, "before_flush", _flush_before_flush)
    event.listen(sessions, "do_orm_execute", _flush_before_execute)
    event.listen(sessions, "after_rollback", _forget_staged)
    event.listen(sessions, "after_transaction_create", _flush_before_savepoint)


def stage_rows(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """:func:`insert_rows` later in this transaction, together with the other rows staged for ``table``.

    Only for tables this transaction does not read back through the connection itself (as the audit
    log and the outbox): the rows are written before any ORM statement, ORM flush or the commit. Rows
    of one table keep their order; rows of different tables may be written in another order, so
    staged tables must not reference each other.
    """
    if not rows:
        return
    staged = _staged(session)
    if staged is None:
        insert_rows(session.connection(), table, rows)
        return
    key = (table.name, tuple(rows[0]))
    entry = staged.inserts.get(key)
    if entry is None:
        staged.inserts[key] = (table, list(rows))
    else:
        entry[1].extend(rows)


def stage_update(
    session: Session, key: str, build: Callable[[], ClauseElement], params: Mapping[str, Any], *, dedupe: object
) -> None:
    """:func:`execute_compiled` later in this transaction, after the staged inserts; of the updates staged
    with the same ``dedupe``, only the last runs (it must make the earlier ones redundant)."""
    staged = _staged(session)
    if staged is None:
        execute_compiled(session.connection(), key, build, params)
        return
    staged.updates.pop(dedupe, None)  # re-inserted last: updates run in the order of their final staging
    staged.updates[dedupe] = (key, build, params)


def flush_staged(session: Session, connection: Connection | None = None) -> None:
    """Write what is staged in ``session`` now (inserts in one executemany per table, then the updates)."""
    staged: _Staged | None = session.info.get(_STAGED)
    if staged is None or not (staged.inserts or staged.updates):
        return
    inserts, updates = staged.inserts, staged.updates
    staged.inserts, staged.updates = {}, {}
    connection = connection or session.connection()
    for table, rows in inserts.values():
        insert_rows(connection, table, rows)
    for key, build, params in updates.values():
        execute_compiled(connection, key, build, params)


def _flush_before_flush(session: Session, _context: Any, _instances: Any) -> None:
    flush_staged(session)


def _flush_before_execute(state: ORMExecuteState) -> None:
    flush_staged(state.session)


def _flush_before_savepoint(session: Session, transaction: SessionTransaction) -> None:
    # Rows staged before a savepoint belong outside it: written through the enclosing transaction's
    # connection now, before the nested transaction emits its SAVEPOINT (it does so on first use).
    parent = transaction.parent
    if transaction.nested and parent is not None:
        flush_staged(session, parent.connection(None))


def _forget_staged(session: Session) -> None:
    staged: _Staged | None = session.info.get(_STAGED)
    if staged is not None and not session.in_transaction():
        staged.inserts, staged.updates = {}, {}
