"""The group-commit writer, on SQLite and on PostgreSQL: units share a commit, a failing unit fails alone, isolated
units run alone, and a failed commit fails every unit of its batch, retryably, having written nothing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from services.chassis.db import Database
from services.chassis.errors import NotFound, is_transient

_metadata = MetaData()
_items = Table("items", _metadata, Column("id", Integer, primary_key=True), Column("name", String(20)))


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    yield from _database(database_url)


@pytest.fixture
def pg_db(postgres_url: str) -> Iterator[Database]:
    """PostgreSQL only: deferred constraint triggers, row locks held by a batch until it commits."""
    yield from _database(postgres_url)


def _database(url: str) -> Iterator[Database]:
    database = Database(url, group_commit=True)
    _metadata.create_all(database.engine)
    yield database
    database.close()


def _count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(_items)) or 0)


async def test_concurrent_units_commit_together_and_a_failing_unit_fails_alone(db: Database) -> None:
    calls: dict[int, int] = {}

    def unit(i: int):  # type: ignore[no-untyped-def]
        def work(session: Session) -> int:
            calls[i] = calls.get(i, 0) + 1
            session.execute(insert(_items).values(id=i, name=f"n{i}"))
            if i == 7:
                raise NotFound("unit 7 refuses")
            return i

        return work

    results = await asyncio.gather(*(db.run(unit(i)) for i in range(20)), return_exceptions=True)
    assert [r for r in results if isinstance(r, Exception)] == [results[7]]
    assert isinstance(results[7], NotFound)
    assert [r for r in results if not isinstance(r, Exception)] == [i for i in range(20) if i != 7]
    assert await db.run(_count) == 19  # unit 7's insert rolled back, everyone else's committed
    writer = db._writer
    assert writer is not None and writer.batches < 20  # they really were grouped
    assert writer.replays >= 1  # the batch with unit 7 was replayed with savepoints


async def test_isolated_units_never_share_a_transaction_and_never_replay(db: Database) -> None:
    runs: list[str] = []

    def isolated(session: Session) -> None:
        runs.append("isolated")
        session.execute(insert(_items).values(id=1000, name="iso"))

    def failing(session: Session) -> None:
        raise NotFound("no")

    results = await asyncio.gather(
        *(db.run(failing) for _ in range(5)),
        db.run(isolated, isolated=True),
        *(db.run(failing) for _ in range(5)),
        return_exceptions=True,
    )
    assert runs == ["isolated"]  # the failures around it caused replays, never of the isolated unit
    assert results[5] is None
    assert await db.run(_count) == 1


class _OrmBase(DeclarativeBase):
    pass


class _Note(_OrmBase):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(String(20))


async def test_orm_rows_returned_by_units_stay_readable_when_another_unit_of_the_batch_fails(db: Database) -> None:
    """Found by the system suite's fuzz (ListAuditEvents answered INTERNAL, DetachedInstanceError on SQLite): a
    failing unit made the replay expire every object in the session, so rows that earlier units of the same
    batch had returned could no longer be read once the transaction closed."""
    _OrmBase.metadata.create_all(db.engine)
    await db.run(lambda session: session.add_all([_Note(id=i, text=f"t{i}") for i in range(20)]))

    def unit(i: int):  # type: ignore[no-untyped-def]
        def work(session: Session) -> list[_Note]:
            if i % 5 == 4:
                raise NotFound("this unit refuses")
            return list(session.scalars(select(_Note).where(_Note.id <= i)))

        return work

    for _round in range(5):
        results = await asyncio.gather(*(db.run(unit(i)) for i in range(20)), return_exceptions=True)
        pages = [r for r in results if not isinstance(r, Exception)]
        assert len(pages) == 16
        assert all([note.text for note in page] == [f"t{n}" for n in range(len(page))] for page in pages)
    writer = db._writer
    assert writer is not None and writer.replays >= 1  # the savepoint path really ran


_REFUSE_AT_COMMIT = """
CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name = 'doomed' THEN
        RAISE EXCEPTION 'refused at commit' USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON items DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION refuse_at_commit();
"""


async def test_a_failed_commit_fails_every_unit_of_its_batch_retryably_and_writes_nothing(pg_db: Database) -> None:
    db = pg_db  # the failure at COMMIT is a PostgreSQL deferred constraint trigger
    with db.engine.begin() as connection:
        connection.exec_driver_sql(_REFUSE_AT_COMMIT)
    gate = threading.Event()

    def held(session: Session) -> None:
        # Keeps the writer busy while the units below queue, so they make one batch (this one or the next).
        assert gate.wait(30)
        session.execute(insert(_items).values(id=100, name="before"))

    def unit(i: int):  # type: ignore[no-untyped-def]
        def work(session: Session) -> int:
            session.execute(insert(_items).values(id=i, name="doomed" if i == 5 else f"n{i}"))
            return i

        return work

    first = asyncio.ensure_future(db.run(held))
    batch = [asyncio.ensure_future(db.run(unit(i))) for i in range(10)]
    await asyncio.sleep(0)  # every unit is queued
    gate.set()
    held_result, *results = await asyncio.gather(first, *batch, return_exceptions=True)
    assert all(isinstance(r, Exception) and is_transient(r) for r in results), results  # retry later, all of them
    written = await db.run(lambda s: list(s.scalars(select(_items.c.id))))
    assert written == ([] if isinstance(held_result, Exception) else [100])  # none of the batch was written


_counters = Table("counters", _metadata, Column("id", String(8), primary_key=True), Column("n", Integer))


async def test_two_writers_locking_rows_in_opposite_orders_take_them_in_lock_order_without_deadlock(
    pg_db: Database,
) -> None:
    db = pg_db  # SQLite has one write lock; PostgreSQL batches hold row locks until they commit
    other = Database(db.url, group_commit=True)  # a second replica's writer
    with db.engine.begin() as connection:
        connection.execute(insert(_counters), [{"id": "a", "n": 0}, {"id": "b", "n": 0}])
    locked = {db: threading.Event(), other: threading.Event()}
    gates = {db: threading.Event(), other: threading.Event()}

    def held(writer: Database) -> Callable[[Session], None]:
        def work(_session: Session) -> None:
            assert gates[writer].wait(30)  # the writer's next batch holds both of its units

        return work

    def bump(row: str, writer: Database, *, first: bool) -> Callable[[Session], None]:
        def work(session: Session) -> None:
            session.execute(update(_counters).where(_counters.c.id == row).values(n=_counters.c.n + 1))
            if first:  # the first lock of a batch run in submission order: let the other writer take its first
                locked[writer].set()
                locked[other if writer is db else db].wait(2)

        return work

    try:
        units = []
        for writer, rows in ((db, "ab"), (other, "ba")):
            units.append(asyncio.ensure_future(writer.run(held(writer))))
            for i, row in enumerate(rows):
                units.append(asyncio.ensure_future(writer.run(bump(row, writer, first=i == 0), lock_order=row)))
        await asyncio.sleep(0)  # every unit is queued behind its writer's gate
        for gate in gates.values():
            gate.set()
        await asyncio.gather(*units)
        assert await db.run(lambda s: sorted(s.execute(select(_counters.c.id, _counters.c.n)))) == [("a", 2), ("b", 2)]
        assert db._writer is not None and other._writer is not None
        assert db._writer.replays == other._writer.replays == 0  # no batch was chosen as a deadlock victim
    finally:
        other.close()
