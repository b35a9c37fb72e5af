"""gRPC servicers of the vault: protobuf <-> domain objects, nothing else (rules live in records.py,
subjects.py and admin.py; each call is one transaction on a worker thread)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

from google.protobuf.struct_pb2 import Struct
from grpc import aio
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from steward.vault.v1 import vault_pb2 as pb
from steward.vault.v1 import vault_pb2_grpc

from services.chassis.db import Database
from services.chassis.errors import InvalidArgument, NotFound, PermissionDenied, Reason
from services.chassis.identity import CallerIdentity, require_identity
from services.chassis.ids import PAGE_TOKEN_MAX_LENGTH, valid_id
from services.chassis.timestamps import time_window, to_timestamp
from services.vault import admin, exports, records, restore, subjects
from services.vault.audit import Fault
from services.vault.checkpoints import signed_fields
from services.vault.domain import RecordInput, RecordView, VaultContext
from services.vault.models import AuditEntry, TenantVault

__all__ = ["CONTACT_READERS", "VaultAdminServicer", "VaultContactServicer", "VaultServicer"]

T = TypeVar("T")
_TENANT_STATES = {
    "active": pb.TENANT_STATE_ACTIVE,
    "closed": pb.TENANT_STATE_CLOSED,
    "shredded": pb.TENANT_STATE_SHREDDED,
}
EXPORT_CHUNK = 500
DOWNLOAD_PIECE = 256 * 1024  # bytes of an export bundle per DownloadExport message
_AUDIT_FAULTS = {
    Fault.NONE: pb.AUDIT_FAULT_UNSPECIFIED,
    Fault.ENTRY_MISMATCH: pb.AUDIT_FAULT_ENTRY_MISMATCH,
    Fault.ENTRIES_MISSING: pb.AUDIT_FAULT_ENTRIES_MISSING,
    Fault.CHECKPOINT_CONTRADICTED: pb.AUDIT_FAULT_CHECKPOINT_CONTRADICTED,
    Fault.CHECKPOINT_SIGNATURE_INVALID: pb.AUDIT_FAULT_CHECKPOINT_SIGNATURE_INVALID,
}


def _data_bytes(data: Struct) -> bytes:
    return data.SerializeToString(deterministic=True)


def _record(view: RecordView) -> pb.Record:
    message = pb.Record()
    _fill_record(message, view)
    return message


def _fill_record(message: pb.Record, view: RecordView) -> None:
    """Set ``message`` (a new Record, or one added in place to a response's list) from ``view``."""
    message.id = view.id
    message.subject_id = view.subject_id
    message.kind = view.kind  # type: ignore[assignment]
    message.version = view.version
    created, updated = to_timestamp(view.created_at), to_timestamp(view.updated_at)
    if created is not None:
        message.created_at.CopyFrom(created)
    if updated is not None:
        message.updated_at.CopyFrom(updated)
    if view.data is not None:
        message.data.MergeFromString(view.data)


def _records_into(records: Any, views: Iterable[RecordView]) -> None:
    """Append ``views`` to a response's repeated Record field, built in place (no message copied per record)."""
    add = records.add
    for view in views:
        _fill_record(add(), view)


def _input(message: pb.NewRecord) -> RecordInput:
    ids = message.identifiers
    return RecordInput(
        kind=message.kind,
        data=_data_bytes(message.data),
        subject_id=message.subject_id,
        email=ids.email,
        phone=ids.phone,
        external_id=ids.external_id,
    )


def _tenant(row: TenantVault) -> pb.Tenant:
    return pb.Tenant(
        tenant_id=row.tenant_id,
        state=_TENANT_STATES[row.state],
        key_version=row.key_version,
        min_decryption_version=row.min_decryption_version,
        created_at=to_timestamp(row.created_at),
        closed_at=to_timestamp(row.closed_at),
    )


def _audit(row: AuditEntry) -> pb.AuditEvent:
    return pb.AuditEvent(
        seq=row.seq,
        at=to_timestamp(row.at),
        principal=row.principal,
        action=row.action,
        target_ids=row.target_ids.split(),
        result=row.result,
        support_grant_id=row.support_grant_id,
        hash=row.hash,
        prev_hash=row.prev_hash,
    )


class _Base:
    def __init__(self, db: Database, ctx: VaultContext) -> None:
        self.db = db
        self.ctx = ctx

    async def _run(
        self,
        context: aio.ServicerContext,
        work: Callable[[Session, CallerIdentity], T],
        *,
        isolated: bool = False,
        identity: CallerIdentity | None = None,
    ) -> T:
        # isolated: the work has external effects that must not be repeated (Transit key lifecycle,
        # erasure), so it never shares a group commit that could be replayed. ``identity``: already read.
        # Within a batch units run in tenant order, the order every batch takes the tenant locks in.
        if identity is None:
            identity = require_identity(context)
        # A caller whose deadline has passed gets DEADLINE_EXCEEDED and nothing is committed for it.
        return await self.db.run(
            lambda session: work(session, identity),
            isolated=isolated,
            timeout_s=context.time_remaining(),
            lock_order=identity.tenant_id,
        )


class VaultServicer(_Base, vault_pb2_grpc.VaultServiceServicer):
    """VaultService: records and data subjects of the calling tenant."""

    async def PutRecord(self, request: pb.PutRecordRequest, context: aio.ServicerContext) -> pb.PutRecordResponse:
        # An unauthenticated caller learns nothing, not even what a valid request is.
        identity = require_identity(context)
        if not request.HasField("record"):
            raise InvalidArgument("record is missing; send the record to store")
        valid_id("record.subject_id", request.record.subject_id)
        item = _input(request.record)
        key = request.idempotency_key
        [view] = await self._put(
            context, lambda s, who: records.put_records(s, self.ctx, who, [item], key), key, identity
        )
        return pb.PutRecordResponse(record=_record(view))

    async def PutRecords(self, request: pb.PutRecordsRequest, context: aio.ServicerContext) -> pb.PutRecordsResponse:
        identity = require_identity(context)
        if len(request.records) > self.ctx.policy.max_batch:
            raise InvalidArgument(
                f"too many records: at most {self.ctx.policy.max_batch} per call; split the batch",
                reason=Reason.BATCH_TOO_LARGE,
            )
        for i, message in enumerate(request.records):
            valid_id(f"records[{i}].subject_id", message.subject_id)
        items = [_input(message) for message in request.records]
        key = request.idempotency_key
        views = await self._put(
            context, lambda s, who: records.put_records(s, self.ctx, who, items, key), key, identity
        )
        response = pb.PutRecordsResponse()
        _records_into(response.records, views)
        return response

    async def _put(
        self,
        context: aio.ServicerContext,
        work: Callable[[Session, CallerIdentity], T],
        idempotency_key: str,
        identity: CallerIdentity,
    ) -> T:
        try:
            return await self._run(context, work, identity=identity)
        except IntegrityError:
            if not idempotency_key:
                raise
            # Another call with this key committed first (the unique key refused ours): run again to
            # return its result, or refuse if its request differed.
            return await self._run(context, work, identity=identity)

    async def GetRecord(self, request: pb.GetRecordRequest, context: aio.ServicerContext) -> pb.GetRecordResponse:
        valid_id("record_id", request.record_id)
        view = await self._run(context, lambda s, who: records.get_record(s, self.ctx, who, request.record_id))
        return pb.GetRecordResponse(record=_record(view))

    async def ListRecords(self, request: pb.ListRecordsRequest, context: aio.ServicerContext) -> pb.ListRecordsResponse:
        valid_id("subject_id", request.subject_id)
        valid_id("page_token", request.page_token, max_length=PAGE_TOKEN_MAX_LENGTH)
        views, token = await self._run(
            context,
            lambda s, who: records.list_records(
                s,
                self.ctx,
                who,
                subject_id=request.subject_id,
                kind=request.kind,
                page_size=request.page_size,
                page_token=request.page_token,
            ),
        )
        response = pb.ListRecordsResponse(next_page_token=token)
        _records_into(response.records, views)
        return response

    async def UpdateRecord(
        self, request: pb.UpdateRecordRequest, context: aio.ServicerContext
    ) -> pb.UpdateRecordResponse:
        valid_id("record_id", request.record_id)
        data = _data_bytes(request.data)
        view = await self._run(
            context,
            lambda s, who: records.update_record(s, self.ctx, who, request.record_id, data, request.expected_version),
        )
        return pb.UpdateRecordResponse(record=_record(view))

    async def DeleteRecord(
        self, request: pb.DeleteRecordRequest, context: aio.ServicerContext
    ) -> pb.DeleteRecordResponse:
        valid_id("record_id", request.record_id)
        await self._run(
            context, lambda s, who: records.delete_record(s, self.ctx, who, request.record_id, request.expected_version)
        )
        return pb.DeleteRecordResponse()

    async def ResolveSubject(
        self, request: pb.ResolveSubjectRequest, context: aio.ServicerContext
    ) -> pb.ResolveSubjectResponse:
        field = request.WhichOneof("identifier") or ""
        raw = getattr(request, field) if field else ""
        subject_id = await self._run(context, lambda s, who: subjects.resolve_subject(s, self.ctx, who, field, raw))
        if not subject_id:
            raise NotFound("no subject matches that identifier", reason=Reason.SUBJECT_NOT_FOUND)
        return pb.ResolveSubjectResponse(subject_id=subject_id)

    async def ExportSubject(
        self, request: pb.ExportSubjectRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.ExportSubjectResponse]:
        valid_id("subject_id", request.subject_id)
        valid_id("request_id", request.request_id)
        plan = await self._run(
            context,
            lambda s, who: records.start_subject_export(s, self.ctx, who, request.subject_id, request.request_id),
        )
        digest = records.ExportDigest()

        def decrypt(page: records.ExportPlan) -> list[pb.ExportSubjectResponse]:
            out = []
            for view in records.iter_export(page):
                digest.update(view)
                out.append(pb.ExportSubjectResponse(record=_record(view)))
            return out

        # One bounded page at a time (keyset on the record id), so the vault's memory does not grow with the
        # subject: read, decrypt and hash off the loop, send.
        after = ""
        while True:
            page = await self.db.run(lambda s: records.subject_rows(s, plan, after=after, limit=EXPORT_CHUNK))  # noqa: B023
            if not page.rows:
                break
            for item in await asyncio.to_thread(decrypt, page):
                yield item
            if len(page.rows) < EXPORT_CHUNK:
                break
            after = page.rows[-1].id
        # The digest exists only once every record has been streamed, so the event has its own transaction.
        await self.db.run(
            lambda s: records.announce_export(s, self.ctx, plan.tenant_id, plan.subject_id, request.request_id, digest)
        )
        yield pb.ExportSubjectResponse(
            summary=pb.ExportSummary(record_count=digest.total, counts_by_kind=digest.counts, sha256=digest.hexdigest())
        )

    async def ExportTenant(
        self, request: pb.ExportTenantRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.ExportTenantResponse]:
        valid_id("continuation_token", request.continuation_token, max_length=PAGE_TOKEN_MAX_LENGTH)
        token = request.continuation_token
        if token:
            cursor = await self._run(context, lambda s, who: exports.resume_export(s, self.ctx, who, token))
        else:
            size = request.chunk_records
            cursor = await self._run(context, lambda s, who: exports.start_export(s, self.ctx, who, size))

        # One bounded chunk at a time: read (keyset), decrypt and hash off the loop, record its digest, send.
        # The next chunk's rows are read while this one is built (its position is known once this one is read).
        def read(phase: str, after: tuple[str, str]) -> asyncio.Future[exports.ChunkRows | None]:
            return asyncio.ensure_future(self.db.run(lambda s: exports.read_chunk(s, self.ctx, cursor, phase, after)))

        reading = read(cursor.phase, cursor.after)
        try:
            while (rows := await reading) is not None:
                reading = read(rows.phase, rows.after)
                chunk = await asyncio.to_thread(exports.build_chunk, cursor, rows)
                await self.db.run(lambda s: exports.record_chunk(s, cursor, chunk))  # noqa: B023 - awaited here
                exports.advance(cursor, rows, chunk)
                yield pb.ExportTenantResponse(
                    chunk=pb.ExportChunk(
                        body=chunk.body,
                        sha256=chunk.sha256,
                        seq=chunk.seq,
                        continuation_token=exports.continuation_token(cursor, self.ctx.clock.now()),
                        subjects_done=cursor.subjects_done,
                        records_done=cursor.records_done,
                        subjects_total=cursor.subjects_total,
                        records_total=cursor.records_total,
                    )
                )
        finally:
            reading.cancel()  # a dropped stream leaves no read behind
        manifest = await self._run(context, lambda s, who: exports.finish_export(s, self.ctx, who, cursor))
        yield pb.ExportTenantResponse(manifest=await self.db.call(exports.sign_manifest, self.ctx, manifest))

    async def DownloadExport(
        self, request: pb.DownloadExportRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.DownloadExportResponse]:
        valid_id("export_id", request.export_id)
        bundle = await self._run(context, lambda s, who: exports.open_bundle(s, self.ctx, who, request.export_id))
        for start in range(0, len(bundle.document), DOWNLOAD_PIECE):
            yield pb.DownloadExportResponse(data=bundle.document[start : start + DOWNLOAD_PIECE])
        yield pb.DownloadExportResponse(info=bundle.info)

    async def EraseSubject(
        self, request: pb.EraseSubjectRequest, context: aio.ServicerContext
    ) -> pb.EraseSubjectResponse:
        valid_id("subject_id", request.subject_id)
        valid_id("request_id", request.request_id)
        tomb = await self._run(
            context,
            lambda s, who: subjects.erase_subject(s, self.ctx, who, request.subject_id, request.request_id),
            isolated=True,
        )
        return pb.EraseSubjectResponse(
            tombstone=pb.Tombstone(
                subject_id=tomb.subject_id,
                erased_at=to_timestamp(tomb.erased_at),
                request_id=tomb.request_id,
                records_erased=tomb.records_erased,
            )
        )

    async def RestrictSubject(
        self, request: pb.RestrictSubjectRequest, context: aio.ServicerContext
    ) -> pb.RestrictSubjectResponse:
        valid_id("subject_id", request.subject_id)
        valid_id("request_id", request.request_id)
        await self._run(
            context,
            lambda s, who: subjects.set_restriction(s, self.ctx, who, request.subject_id, request.request_id, True),
        )
        return pb.RestrictSubjectResponse()

    async def LiftRestriction(
        self, request: pb.LiftRestrictionRequest, context: aio.ServicerContext
    ) -> pb.LiftRestrictionResponse:
        valid_id("subject_id", request.subject_id)
        valid_id("request_id", request.request_id)
        await self._run(
            context,
            lambda s, who: subjects.set_restriction(s, self.ctx, who, request.subject_id, request.request_id, False),
        )
        return pb.LiftRestrictionResponse()

    async def SetLegalHold(
        self, request: pb.SetLegalHoldRequest, context: aio.ServicerContext
    ) -> pb.SetLegalHoldResponse:
        valid_id("subject_id", request.subject_id)
        valid_id("hold_id", request.hold_id)
        await self._run(
            context, lambda s, who: subjects.set_legal_hold(s, self.ctx, who, request.subject_id, request.hold_id)
        )
        return pb.SetLegalHoldResponse()

    async def ClearLegalHold(
        self, request: pb.ClearLegalHoldRequest, context: aio.ServicerContext
    ) -> pb.ClearLegalHoldResponse:
        valid_id("subject_id", request.subject_id)
        valid_id("hold_id", request.hold_id)
        await self._run(
            context, lambda s, who: subjects.clear_legal_hold(s, self.ctx, who, request.subject_id, request.hold_id)
        )
        return pb.ClearLegalHoldResponse()


class VaultAdminServicer(_Base, vault_pb2_grpc.VaultAdminServiceServicer):
    """VaultAdminService: the calling tenant's vault lifecycle, keys, audit and tombstones."""

    async def CreateTenant(
        self, request: pb.CreateTenantRequest, context: aio.ServicerContext
    ) -> pb.CreateTenantResponse:
        row = await self._run(context, lambda s, who: admin.create_tenant(s, self.ctx, who), isolated=True)
        return pb.CreateTenantResponse(tenant=_tenant(row))

    async def GetTenant(self, request: pb.GetTenantRequest, context: aio.ServicerContext) -> pb.GetTenantResponse:
        row = await self._run(context, lambda s, who: admin.get_tenant(s, self.ctx, who))
        return pb.GetTenantResponse(tenant=_tenant(row))

    async def GetKeyStatus(
        self, request: pb.GetKeyStatusRequest, context: aio.ServicerContext
    ) -> pb.GetKeyStatusResponse:
        row, info = await self._run(context, lambda s, who: admin.key_status(s, self.ctx, who), isolated=True)
        return pb.GetKeyStatusResponse(
            key_name=info.name,
            latest_version=info.latest_version,
            min_decryption_version=info.min_decryption_version,
            min_encryption_version=info.min_encryption_version,
            deletion_allowed=info.deletion_allowed,
            exportable=info.exportable,
            vault_key_version=row.key_version,
        )

    async def CloseTenant(self, request: pb.CloseTenantRequest, context: aio.ServicerContext) -> pb.CloseTenantResponse:
        row = await self._run(context, lambda s, who: admin.close_tenant(s, self.ctx, who))
        return pb.CloseTenantResponse(tenant=_tenant(row))

    async def ReopenTenant(
        self, request: pb.ReopenTenantRequest, context: aio.ServicerContext
    ) -> pb.ReopenTenantResponse:
        row = await self._run(context, lambda s, who: admin.reopen_tenant(s, self.ctx, who))
        return pb.ReopenTenantResponse(tenant=_tenant(row))

    async def ShredTenant(self, request: pb.ShredTenantRequest, context: aio.ServicerContext) -> pb.ShredTenantResponse:
        valid_id("confirm_tenant_id", request.confirm_tenant_id)
        cert = await self._run(
            context, lambda s, who: admin.shred_tenant(s, self.ctx, who, request.confirm_tenant_id), isolated=True
        )
        return pb.ShredTenantResponse(
            certificate=pb.ShredCertificate(
                certificate_id=cert.certificate_id,
                tenant_id=cert.tenant_id,
                key_name=cert.key_name,
                shredded_at=to_timestamp(cert.shredded_at),
                records_removed=cert.records_removed,
                subjects_removed=cert.subjects_removed,
                audit_head=cert.audit_head,
            )
        )

    async def RotateTenantKey(
        self, request: pb.RotateTenantKeyRequest, context: aio.ServicerContext
    ) -> pb.RotateTenantKeyResponse:
        version = await self._run(context, lambda s, who: admin.rotate_tenant_key(s, self.ctx, who), isolated=True)
        return pb.RotateTenantKeyResponse(key_version=version)

    async def RewrapTenantKeys(
        self, request: pb.RewrapTenantKeysRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.RewrapTenantKeysResponse]:
        identity = require_identity(context)
        progress = admin.rewrap_tenant_keys(self.db, self.ctx, identity, request.batch_size)
        while True:
            step = await self.db.call(next, progress, None)
            if step is None:
                break
            yield pb.RewrapTenantKeysResponse(
                rewrapped=step.rewrapped,
                total=step.total,
                done=step.done,
                min_decryption_version=step.min_decryption_version,
            )

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: aio.ServicerContext
    ) -> pb.ListAuditEventsResponse:
        valid_id("page_token", request.page_token, max_length=PAGE_TOKEN_MAX_LENGTH)
        valid_id("support_grant_id", request.support_grant_id)
        rows, token = await self._run(
            context,
            lambda s, who: admin.list_audit(
                s,
                self.ctx,
                who,
                page_size=request.page_size,
                page_token=request.page_token,
                support_grant_id=request.support_grant_id,
            ),
        )
        return pb.ListAuditEventsResponse(events=[_audit(row) for row in rows], next_page_token=token)

    async def VerifyAuditChain(
        self, request: pb.VerifyAuditChainRequest, context: aio.ServicerContext
    ) -> pb.VerifyAuditChainResponse:
        report = await self._run(context, lambda s, who: admin.verify_audit(s, self.ctx, who))
        return pb.VerifyAuditChainResponse(
            intact=report.intact,
            entries_checked=report.entries_checked,
            first_broken_seq=report.first_broken_seq,
            fault=_AUDIT_FAULTS[report.fault],
            checkpoints_verified=report.checkpoints_verified,
            anchored_seq=report.anchored_seq,
            bad_checkpoint_seq=report.bad_checkpoint_seq,
        )

    async def ApplyTombstones(
        self, request: pb.ApplyTombstonesRequest, context: aio.ServicerContext
    ) -> pb.ApplyTombstonesResponse:
        checked, reerased = await self._run(context, lambda s, who: admin.apply_tombstones(s, self.ctx, who))
        return pb.ApplyTombstonesResponse(tombstones_checked=checked, subjects_reerased=reerased)

    async def ApplyAllTombstones(
        self, request: pb.ApplyAllTombstonesRequest, context: aio.ServicerContext
    ) -> pb.ApplyAllTombstonesResponse:
        identity = require_identity(context, tenant_required=False)
        if identity.principal_kind != "operator":
            raise PermissionDenied("ApplyAllTombstones spans every tenant: only operators (ops roles) may call it")
        done = await restore.apply_all_tombstones(self.db, self.ctx, identity)
        return pb.ApplyAllTombstonesResponse(
            tombstones_checked=done.tombstones_checked,
            subjects_reerased=done.subjects_reerased,
            tenants=done.tenants,
            high_water_mark=done.high_water_mark,
        )

    async def GetAuditCheckpoint(
        self, request: pb.GetAuditCheckpointRequest, context: aio.ServicerContext
    ) -> pb.GetAuditCheckpointResponse:
        signed = await self._run(context, lambda s, who: admin.get_audit_checkpoint(s, self.ctx, who), isolated=True)
        return pb.GetAuditCheckpointResponse(
            checkpoint=pb.AuditCheckpoint(
                **signed_fields(signed.checkpoint),
                message=signed.message,
                public_key=signed.public_key,
                key_name=signed.key_name,
            )
        )


_CONTACT_FIELDS = {pb.CONTACT_CHANNEL_EMAIL: "email", pb.CONTACT_CHANNEL_WHATSAPP: "phone"}
CONTACT_READERS = ("notify",)
_PRINCIPAL_MAX_LENGTH = 200  # vault_audit.principal
"""mTLS identities (certificate names) that may read subjects' addresses: notify, which sends."""


class VaultContactServicer(_Base, vault_pb2_grpc.VaultContactServiceServicer):
    """VaultContactService: a subject's address for notify at send time (never forwarded by the gateway)."""

    def __init__(self, db: Database, ctx: VaultContext, readers: tuple[str, ...] = CONTACT_READERS) -> None:
        super().__init__(db, ctx)
        self.readers = frozenset(name.encode() for name in readers)

    def _require_reader(self, context: aio.ServicerContext, method: str, tenant_id: str) -> CallerIdentity:
        """The caller's identity, if its verified certificate is one of the readers and ``tenant_id`` is its tenant."""
        # The verified certificate, not metadata: without mTLS there is no peer name and nobody may read.
        if not self.readers.intersection(context.peer_identities() or ()):
            raise PermissionDenied(f"{method} is served only to notify's mTLS identity", reason=Reason.PEER_NOT_ALLOWED)
        who = require_identity(context)
        if not tenant_id:
            raise InvalidArgument("tenant_id is required: the tenant of the call", metadata={"field": "tenant_id"})
        if tenant_id != who.tenant_id:
            raise PermissionDenied("tenant_id differs from the tenant of the caller's identity; send the same tenant")
        return who

    async def GetSubjectContact(
        self, request: pb.GetSubjectContactRequest, context: aio.ServicerContext
    ) -> pb.GetSubjectContactResponse:
        self._require_reader(context, "GetSubjectContact", request.tenant_id)
        valid_id("subject_id", request.subject_id)
        field = _CONTACT_FIELDS.get(request.channel)
        if field is None:
            raise InvalidArgument("channel must be CONTACT_CHANNEL_EMAIL or CONTACT_CHANNEL_WHATSAPP")
        read = await self._run(
            context, lambda s, who: subjects.read_contact(s, self.ctx, who, request.subject_id, field)
        )
        if read.refusal is not None:
            raise read.refusal
        return pb.GetSubjectContactResponse(address=read.address)

    async def ListTouchedSubjects(
        self, request: pb.ListTouchedSubjectsRequest, context: aio.ServicerContext
    ) -> pb.ListTouchedSubjectsResponse:
        who = self._require_reader(context, "ListTouchedSubjects", request.tenant_id)
        if not request.principal or len(request.principal) > _PRINCIPAL_MAX_LENGTH:
            raise InvalidArgument(
                f"principal is required, at most {_PRINCIPAL_MAX_LENGTH} characters (as the audit names it)",
                reason=Reason.MALFORMED_ID,
                metadata={"field": "principal"},
            )
        start, end = time_window(request)
        valid_id("page_token", request.page_token, max_length=PAGE_TOKEN_MAX_LENGTH)
        page, token = await self._run(
            context,
            lambda s, who: admin.list_touched_subjects(
                s,
                self.ctx,
                who,
                principal=request.principal,
                start=start,
                end=end,
                page_size=request.page_size,
                page_token=request.page_token,
            ),
            identity=who,
        )
        return pb.ListTouchedSubjectsResponse(subject_ids=page, next_page_token=token)
