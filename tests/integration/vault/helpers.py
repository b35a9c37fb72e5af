"""Helpers shared by the vault's integration tests: request builders, error capture, raw database and
NATS stream readers (for canary scans and row counts), and unique canary values.

Fixtures stay in ``tests/plugins`` (``vault_factory``, ``database_url``, ``openbao``...); these are plain
functions so each test file reads top to bottom.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import phonenumbers
import sqlalchemy as sa
from google.protobuf.struct_pb2 import Struct
from grpc import aio
from sqlalchemy.pool import NullPool
from steward.events.v1 import events_pb2
from steward.vault.v1 import vault_pb2 as pb

from tests.plugins.stack import VaultHarness

KINDS = {
    "LEAD_CONTACT": pb.RECORD_KIND_LEAD_CONTACT,
    "INTERACTION": pb.RECORD_KIND_INTERACTION,
    "OPPORTUNITY": pb.RECORD_KIND_OPPORTUNITY,
    "NOTE": pb.RECORD_KIND_NOTE,
    "CUSTOM": pb.RECORD_KIND_CUSTOM,
}
VAULT_TABLES = (
    "vault_tenants",
    "vault_data_keys",
    "vault_subjects",
    "vault_subject_identifiers",
    "vault_records",
    "vault_legal_holds",
    "vault_tombstones",
    "vault_audit",
    "outbox",
    "inbox",
)


# -- values -----------------------------------------------------------------------------------------------


def canary(label: str = "canary") -> str:
    """A value that cannot occur by chance anywhere else (for plaintext-leak scans)."""
    return f"{label}{uuid.uuid4().hex}"


def canary_email() -> str:
    """A unique, valid email address."""
    return f"cnry{uuid.uuid4().hex[:20]}@example.com"


def canary_phone() -> tuple[str, str]:
    """A unique valid Indian mobile number: (as typed, E.164)."""
    while True:
        national = "9" + "".join(random.choice("0123456789") for _ in range(9))
        number = phonenumbers.parse(national, "IN")
        if phonenumbers.is_valid_number(number):
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            return f"+91 {national[:5]} {national[5:]}", e164


def unknown_id() -> str:
    """An id in the same format the vault uses, which no object has."""
    return str(uuid.uuid4())


# -- requests ---------------------------------------------------------------------------------------------


def struct(fields: dict[str, Any]) -> Struct:
    """A protobuf Struct holding ``fields``."""
    message = Struct()
    message.update(fields)
    return message


def lead(
    fields: dict[str, Any] | None = None, *, email: str = "", phone: str = "", external_id: str = ""
) -> pb.NewRecord:
    """A LEAD_CONTACT carrying identifiers."""
    return pb.NewRecord(
        kind=pb.RECORD_KIND_LEAD_CONTACT,
        data=struct({"stage": "new"} if fields is None else fields),
        identifiers=pb.SubjectIdentifiers(email=email, phone=phone, external_id=external_id),
    )


def new_record(kind: int, fields: dict[str, Any] | None = None, *, subject_id: str = "") -> pb.NewRecord:
    """A record of ``kind`` (optionally attached to ``subject_id``)."""
    return pb.NewRecord(kind=kind, subject_id=subject_id, data=struct({"n": 1} if fields is None else fields))


async def put(vault: VaultHarness, tenant: str, record: pb.NewRecord) -> pb.Record:
    """PutRecord and return the stored record (without data)."""
    response = await vault.records.PutRecord(pb.PutRecordRequest(record=record), metadata=vault.md(tenant))
    return response.record


async def get(vault: VaultHarness, tenant: str, record_id: str) -> pb.Record:
    """GetRecord."""
    response = await vault.records.GetRecord(pb.GetRecordRequest(record_id=record_id), metadata=vault.md(tenant))
    return response.record


async def new_subject(vault: VaultHarness, tenant: str, fields: dict[str, Any] | None = None) -> pb.Record:
    """A fresh subject (by a unique email) with one LEAD_CONTACT record; returns that record."""
    return await put(vault, tenant, lead(fields, email=canary_email()))


async def export(vault: VaultHarness, tenant: str, subject_id: str, request_id: str = "") -> list[Any]:
    """Every message of ExportSubject (records then the summary)."""
    call = vault.records.ExportSubject(
        pb.ExportSubjectRequest(subject_id=subject_id, request_id=request_id), metadata=vault.md(tenant)
    )
    return [item async for item in call]


# -- errors -----------------------------------------------------------------------------------------------


async def rpc_error(call: Awaitable[Any] | AsyncIterator[Any]) -> aio.AioRpcError:
    """Await a unary call (or drain a streaming one) that must fail; return its error."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:  # type: ignore[union-attr]
                pass
        else:
            await call  # type: ignore[misc]
    except aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded but was expected to fail")


async def expect(call: Awaitable[Any] | AsyncIterator[Any], code: grpc.StatusCode, *needles: str) -> str:
    """The call fails with ``code`` and its message contains each of ``needles``; returns the message."""
    exc = await rpc_error(call)
    message = exc.details() or ""
    assert exc.code() == code, f"expected {code.name}, got {exc.code().name}: {message}"
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


# -- raw storage ------------------------------------------------------------------------------------------


@dataclass
class RawDatabase:
    """Direct SQL access to a vault database, bypassing the service (to inspect or tamper)."""

    url: str

    def __post_init__(self) -> None:
        self.engine = sa.create_engine(self.url, poolclass=NullPool)

    def close(self) -> None:
        """Release the engine."""
        self.engine.dispose()

    def table_names(self) -> list[str]:
        """Every table in the database."""
        return sorted(sa.inspect(self.engine).get_table_names())

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        """Every row of ``table``."""
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(f'SELECT * FROM "{table}"'))]

    def counts(self, tables: Iterable[str] = VAULT_TABLES) -> dict[str, int]:
        """Row count per table."""
        with self.engine.connect() as conn:
            return {t: int(conn.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar_one()) for t in tables}

    def scalar(self, sql: str, **params: Any) -> Any:
        """One value."""
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def all(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Every row of a query."""
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql), params)]

    def execute(self, sql: str, **params: Any) -> int:
        """Run a write statement outside the service; returns the rows affected."""
        with self.engine.begin() as conn:
            return int(conn.execute(sa.text(sql), params).rowcount)

    def every_value(self) -> list[tuple[str, bytes]]:
        """(table, value as bytes) for every column of every row of every table."""
        found = []
        for table in self.table_names():
            for row in self.rows(table):
                for value in row:
                    found.append((table, _as_bytes(value)))
        return found

    def file_bytes(self) -> bytes:
        """SQLite only: the raw bytes of the database file and its WAL (free pages included)."""
        path = Path(sa.engine.make_url(self.url).database or "")
        return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


def sqlite_backup(url: str, destination: Path) -> str:
    """A consistent copy of a live SQLite database (WAL included) at ``destination``; returns its URL."""
    source = sqlite3.connect(sa.engine.make_url(url).database or "")
    target = sqlite3.connect(destination)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return f"sqlite:///{destination}"


def leaks(haystack: bytes, needles: Iterable[str]) -> list[str]:
    """Which ``needles`` occur in ``haystack`` (UTF-8)."""
    return [n for n in needles if n.encode() in haystack]


# -- NATS -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamMessage:
    """One message read back from the STEWARD stream."""

    subject: str
    data: bytes
    headers: dict[str, str]

    def event(self) -> events_pb2.Event:
        """The decoded envelope."""
        event = events_pb2.Event()
        event.ParseFromString(self.data)
        return event


async def stream_messages(nats_url: str, stream: str = "STEWARD") -> list[StreamMessage]:
    """Every message currently stored on ``stream``."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            out.append(StreamMessage(msg.subject or "", msg.data or b"", dict(msg.headers or {})))
        return out
    finally:
        await nc.close()


async def outbox_drained(raw: RawDatabase) -> bool:
    """True when every outbox row has been published."""
    return int(raw.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")) == 0
