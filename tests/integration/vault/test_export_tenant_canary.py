"""Canary scan of a tenant export: the plaintext it streams to the tenant appears nowhere else — not in the vault's
database (tables, raw SQLite file and WAL, export chunk digests), not in the erasure ledger, not on NATS, not in
the logs — including after a dropped and resumed stream and a data-subject export bundle."""

from __future__ import annotations

import logging

import nats
import pytest
from steward.events.v1 import events_pb2 as ev
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.bus import make_event
from services.vault.events import DSR_TASK_SUBJECT
from tests.integration.vault.helpers import (
    RawDatabase,
    canary,
    canary_email,
    lead,
    leaks,
    new_record,
    outbox_drained,
    put,
    stream_messages,
)
from tests.integration.vault.test_export_tenant import content, read_export, verifies
from tests.plugins.infra import NatsServer
from tests.plugins.stack import VaultFactory
from tests.plugins.waiting import eventually


async def test_exported_plaintext_is_in_the_export_and_nowhere_else(
    vault_factory: VaultFactory, database_url: str, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    vault = await vault_factory(database_url=database_url, nats_url=nats_server.url)
    assert vault.app.bus is not None
    await vault.app.bus.wait_connected(15)
    tenant = await vault.new_tenant()
    needles: list[str] = []
    subject_ids = []
    for _ in range(3):
        email, name, note = canary_email(), canary("name"), canary("note")
        needles += [email, name, note]
        contact = await put(vault, tenant, lead({"name": name, "email": email}, email=email))
        subject_ids.append(contact.subject_id)
        await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"text": note}, subject_id=contact.subject_id))
    loose = canary("loose")
    needles.append(loose)
    await put(vault, tenant, new_record(pb.RECORD_KIND_CUSTOM, {"field": loose}))

    # A dropped stream, resumed; and a data-subject export bundle made by the EXPORT task.
    first, _ = await read_export(vault, tenant, chunk_records=2, stop_after=2)
    rest, manifest = await read_export(vault, tenant, token=first[-1].continuation_token)
    assert manifest is not None and verifies(first + rest, manifest)
    streamed = b"".join(chunk.body for chunk in first + rest)
    assert not [n for n in needles if n.encode() not in streamed], "positive control: the export holds every value"
    assert content(first + rest)
    nc = await nats.connect(nats_server.url)
    request = ev.VaultTaskRequested(
        task_id="task-canary", request_id="dsr-canary", action=ev.VAULT_ACTION_EXPORT, subject_id=subject_ids[0]
    )
    event = make_event(request, source="dsr", tenant_id=tenant)
    await nc.jetstream().publish(DSR_TASK_SUBJECT, event.SerializeToString(), headers={"Nats-Msg-Id": event.id})
    await nc.close()
    md = vault.md(tenant)

    async def bundled() -> bool:
        try:
            return bool(
                [
                    m
                    async for m in vault.records.DownloadExport(
                        pb.DownloadExportRequest(export_id="dsr-canary"), metadata=md
                    )
                ]
            )
        except Exception:
            return False

    await eventually(bundled, 30, what="the export bundle")

    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    ledger = RawDatabase(vault.settings.tombstone_database_url.get_secret_value())
    try:
        assert raw.scalar("SELECT count(*) FROM vault_tenant_export_chunks") == len(first + rest)
        assert raw.scalar("SELECT count(*) FROM vault_export_bundles") == 1
        for db in (raw, ledger):
            for table, value in db.every_value():
                found = leaks(value, needles)
                assert not found, f"{table} holds plaintext {found}"
            if db.url.startswith("sqlite"):
                assert not leaks(db.file_bytes(), needles), "plaintext in the raw SQLite file or WAL"
        assert any(leaks(value, [manifest.export_id]) for _, value in raw.every_value()), "the scan sees ids"

        async def published() -> bool:
            return await outbox_drained(raw)

        await eventually(published, what="outbox published")
    finally:
        raw.close()
        ledger.close()

    stream = await stream_messages(nats_server.url)
    assert stream
    for message in stream:
        blob = message.subject.encode() + message.data + repr(sorted(message.headers.items())).encode()
        assert not leaks(blob, needles), f"{message.subject} carries plaintext"

    logged = "\n".join(f"{r.name} {r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert not leaks(logged.encode(), needles), "plaintext in the logs"
    assert leaks(logged.encode(), [tenant]), "the log capture saw nothing"
