"""Staged hot-path writes (fastsql.stage_rows / stage_update): the rows of many units go in one insert and a
keyed update runs once, yet every read in the transaction sees them, a rollback drops them, and inside a
savepoint they are written at once so the savepoint's rollback undoes exactly its unit's rows."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, event, func, select, update
from sqlalchemy.orm import Session

from services.chassis.db import Database
from services.chassis.errors import NotFound
from services.chassis.fastsql import stage_rows, stage_update

_metadata = MetaData()
_rows = Table("staged_rows", _metadata, Column("id", Integer, primary_key=True), Column("name", String(20)))
_head = Table("staged_head", _metadata, Column("id", Integer, primary_key=True), Column("value", Integer))


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url, group_commit=True)
    _metadata.create_all(database.engine)
    with database.transaction() as session:
        session.execute(_head.insert().values(id=1, value=0))
    yield database
    database.close()


@pytest.fixture
def statements(db: Database) -> list[tuple[str, int]]:
    """(first word of the SQL, number of parameter sets) of every statement the engine sends."""
    seen: list[tuple[str, int]] = []

    def note(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, executemany: bool) -> None:
        seen.append((sql.split()[0].upper(), len(params) if executemany else 1))

    event.listen(db.engine, "before_cursor_execute", note)
    return seen


def _head_update() -> Any:
    return update(_head).where(_head.c.id == bindparam("hid")).values(value=bindparam("value"))


def _stage(session: Session, i: int) -> None:
    stage_rows(session, _rows, [{"id": i, "name": f"n{i}"}])
    stage_update(session, "test.head", _head_update, {"hid": 1, "value": i}, dedupe="head")


def _count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(_rows)) or 0)


def _state(db: Database) -> tuple[list[int], int]:
    with db.transaction() as session:
        ids = list(session.scalars(select(_rows.c.id).order_by(_rows.c.id)))
        return ids, int(session.scalar(select(_head.c.value)) or 0)


def test_staged_rows_go_in_one_insert_and_the_keyed_update_runs_once_at_commit(
    db: Database, statements: list[tuple[str, int]]
) -> None:
    with db.transaction() as session:
        for i in range(1, 6):
            _stage(session, i)
        assert [s for s in statements if s[0] in {"INSERT", "UPDATE"}] == []  # nothing written yet
    assert [s for s in statements if s[0] in {"INSERT", "UPDATE"}] == [("INSERT", 5), ("UPDATE", 1)]
    assert _state(db) == ([1, 2, 3, 4, 5], 5)  # the last update's value


def test_a_read_in_the_same_transaction_sees_the_staged_rows(db: Database) -> None:
    with db.transaction() as session:
        _stage(session, 1)
        _stage(session, 2)
        assert _count(session) == 2
        assert session.scalar(select(_head.c.value)) == 2
        _stage(session, 3)  # staged again after the read: written at commit
    assert _state(db) == ([1, 2, 3], 3)


def test_a_rolled_back_transaction_writes_nothing_it_staged(db: Database) -> None:
    with pytest.raises(NotFound), db.transaction() as session:
        _stage(session, 1)
        raise NotFound("refused")
    assert _state(db) == ([], 0)


def test_inside_a_savepoint_rows_are_written_at_once_and_its_rollback_undoes_only_them(db: Database) -> None:
    with db.transaction() as session:
        _stage(session, 1)
        savepoint = session.begin_nested()
        _stage(session, 2)
        savepoint.rollback()
        _stage(session, 3)
    assert _state(db) == ([1, 3], 3)


async def test_a_group_commit_batch_with_a_failing_unit_keeps_every_other_units_rows(db: Database) -> None:
    def unit(i: int):  # type: ignore[no-untyped-def]
        def work(session: Session) -> int:
            _stage(session, i)
            if i == 7:
                raise NotFound("unit 7 refuses")
            return i

        return work

    results = await asyncio.gather(*(db.run(unit(i)) for i in range(1, 21)), return_exceptions=True)
    assert isinstance(results[6], NotFound)
    ids, _ = _state(db)
    assert ids == [i for i in range(1, 21) if i != 7]
    assert db._writer is not None and db._writer.batches < 20  # the units really were grouped
