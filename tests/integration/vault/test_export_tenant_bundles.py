"""DownloadExport: the bundle the vault makes for a data-subject EXPORT task (ACCESS / PORTABILITY), over a real
nats-server and OpenBao. The tenant downloads it by the request id until it expires on the vault's clock; its
records equal what was stored and its bytes hash to the digest the vault states; another tenant's or an unknown id
is NOT_FOUND alike; erasing the subject destroys it."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import grpc
import nats
from steward.events.v1 import events_pb2 as ev
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.bus import make_event
from services.chassis.clock import ManualClock
from services.chassis.errors import error_reason
from services.vault.events import DSR_TASK_SUBJECT
from tests.integration.vault.helpers import canary_email, lead, new_record, put, rpc_error
from tests.plugins.infra import NatsServer
from tests.plugins.stack import VaultFactory, VaultHarness
from tests.plugins.waiting import eventually


async def send_export_task(nats_url: str, tenant: str, subject_id: str, request_id: str) -> None:
    """Publish the EXPORT task as dsr does."""
    request = ev.VaultTaskRequested(
        task_id=f"task-{request_id}", request_id=request_id, action=ev.VAULT_ACTION_EXPORT, subject_id=subject_id
    )
    event = make_event(request, source="dsr", tenant_id=tenant)
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().publish(DSR_TASK_SUBJECT, event.SerializeToString(), headers={"Nats-Msg-Id": event.id})
    finally:
        await nc.close()


async def download(vault: VaultHarness, tenant: str, export_id: str) -> tuple[bytes, pb.ExportBundleInfo]:
    """The bundle's bytes and its closing info."""
    data, info = b"", pb.ExportBundleInfo()
    call = vault.records.DownloadExport(pb.DownloadExportRequest(export_id=export_id), metadata=vault.md(tenant))
    async for item in call:
        if item.WhichOneof("item") == "data":
            data += item.data
        else:
            info = item.info
    return data, info


async def refused(vault: VaultHarness, tenant: str, export_id: str) -> tuple[grpc.StatusCode, str | None, str]:
    exc = await rpc_error(
        vault.records.DownloadExport(pb.DownloadExportRequest(export_id=export_id), metadata=vault.md(tenant))
    )
    return exc.code(), error_reason(exc), exc.details() or ""


async def test_the_owner_downloads_the_bundle_until_it_expires_and_no_one_else_can(
    vault_factory: VaultFactory, nats_server: NatsServer, manual_clock: ManualClock
) -> None:
    vault = await vault_factory(nats_url=nats_server.url, clock=manual_clock)
    assert vault.app.bus is not None
    await vault.app.bus.wait_connected(15)
    tenant, other = await vault.new_tenant(), await vault.new_tenant()
    email = canary_email()
    contact = await put(vault, tenant, lead({"name": "Asha", "email": email}, email=email))
    note = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"text": "called"}, subject_id=contact.subject_id))
    await send_export_task(nats_server.url, tenant, contact.subject_id, "dsr-access-1")

    async def ready() -> bytes:
        return await _downloadable(vault, tenant, "dsr-access-1")

    await eventually(ready, 30, what="the export bundle")
    data, info = await download(vault, tenant, "dsr-access-1")
    assert hashlib.sha256(data).hexdigest() == info.sha256 and info.size_bytes == len(data)
    document = json.loads(data)
    assert document["format"] == "steward.export.v1" and document["subject_id"] == contact.subject_id
    assert document["records"]["RECORD_KIND_LEAD_CONTACT"][0]["data"] == {"name": "Asha", "email": email}
    assert document["records"]["RECORD_KIND_NOTE"][0]["data"] == {"text": "called"}
    assert [r["id"] for r in document["records"]["RECORD_KIND_NOTE"]] == [note.id]
    assert "2 records" in document["summary"] and info.record_count == 2

    # Another tenant naming it, and an id that never existed: the same answer.
    foreign = await refused(vault, other, "dsr-access-1")
    unknown = await refused(vault, tenant, "dsr-never")
    assert foreign[:2] == unknown[:2] == (grpc.StatusCode.NOT_FOUND, "EXPORT_NOT_FOUND")
    assert foreign[2] == unknown[2]
    assert (await refused(vault, tenant, ""))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert (await refused(vault, tenant, "bad\x00id"))[1] == "MALFORMED_ID"

    # Downloads are audited; after 7 days (the vault's clock) the bundle has expired.
    listed = await vault.admin.ListAuditEvents(pb.ListAuditEventsRequest(page_size=500), metadata=vault.md(tenant))
    assert next(list(e.target_ids) for e in listed.events if e.action == "subject.export.download") == [
        contact.subject_id,
        "dsr-access-1",
    ]
    manual_clock.advance(timedelta(days=7, seconds=1))
    assert (await refused(vault, tenant, "dsr-access-1"))[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "EXPORT_EXPIRED",
    )


async def _downloadable(vault: VaultHarness, tenant: str, export_id: str) -> bytes:
    try:
        return (await download(vault, tenant, export_id))[0]
    except grpc.aio.AioRpcError:
        return b""


async def test_erasing_the_subject_destroys_its_bundle(vault_factory: VaultFactory, nats_server: NatsServer) -> None:
    vault = await vault_factory(nats_url=nats_server.url)
    assert vault.app.bus is not None
    await vault.app.bus.wait_connected(15)
    tenant = await vault.new_tenant()
    contact = await put(vault, tenant, lead({"name": "Ravi"}, email=canary_email()))
    await send_export_task(nats_server.url, tenant, contact.subject_id, "dsr-port-1")

    async def ready() -> bytes:
        return await _downloadable(vault, tenant, "dsr-port-1")

    await eventually(ready, 30, what="the export bundle")
    await vault.records.EraseSubject(
        pb.EraseSubjectRequest(subject_id=contact.subject_id, request_id="dsr-del-1"), metadata=vault.md(tenant)
    )
    assert (await refused(vault, tenant, "dsr-port-1"))[:2] == (grpc.StatusCode.NOT_FOUND, "EXPORT_NOT_FOUND")
