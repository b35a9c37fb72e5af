"""gRPC servicers of the vault: protobuf <-> domain objects, nothing else (rules live in records.py,
subjects.py and admin.py; each call is one transaction on a worker thread)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

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
from services.chassis.timestamps import to_timestamp
from services.vault import admin, records, restore, subjects
from services.vault.audit import Fault
from services.vault.checkpoints import signed_fields
from services.vault.domain import RecordInput, RecordView, VaultContext
from services.vault.models import AuditEntry, TenantVault

__all__ = ["VaultAdminServicer", "VaultServicer"]

T = TypeVar("T")
_TENANT_STATES = {
    "active": pb.TENANT_STATE_ACTIVE,
    "closed": pb.TENANT_STATE_CLOSED,
    "shredded": pb.TENANT_STATE_SHREDDED,
}
EXPORT_CHUNK = 500
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
    message = pb.Record(
        id=view.id,
        subject_id=view.subject_id,
        kind=view.kind,  # type: ignore[arg-type]
        version=view.version,
        created_at=to_timestamp(view.created_at),
        updated_at=to_timestamp(view.updated_at),
    )
    if view.data is not None:
        message.data.MergeFromString(view.data)
    return message


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
    ) -> T:
        # isolated: the work has external effects that must not be repeated (Transit key lifecycle,
        # erasure), so it never shares a group commit that could be replayed.
        identity = require_identity(context)
        # A caller whose deadline has passed gets DEADLINE_EXCEEDED and nothing is committed for it.
        return await self.db.run(
            lambda session: work(session, identity), isolated=isolated, timeout_s=context.time_remaining()
        )


class VaultServicer(_Base, vault_pb2_grpc.VaultServiceServicer):
    """VaultService: records and data subjects of the calling tenant."""

    async def PutRecord(self, request: pb.PutRecordRequest, context: aio.ServicerContext) -> pb.PutRecordResponse:
        require_identity(context)  # an unauthenticated caller learns nothing, not even what a valid request is
        if not request.HasField("record"):
            raise InvalidArgument("record is missing; send the record to store")
        valid_id("record.subject_id", request.record.subject_id)
        item = _input(request.record)
        key = request.idempotency_key
        [view] = await self._put(context, lambda s, who: records.put_records(s, self.ctx, who, [item], key), key)
        return pb.PutRecordResponse(record=_record(view))

    async def PutRecords(self, request: pb.PutRecordsRequest, context: aio.ServicerContext) -> pb.PutRecordsResponse:
        require_identity(context)
        if len(request.records) > self.ctx.policy.max_batch:
            raise InvalidArgument(
                f"too many records: at most {self.ctx.policy.max_batch} per call; split the batch",
                reason=Reason.BATCH_TOO_LARGE,
            )
        for i, message in enumerate(request.records):
            valid_id(f"records[{i}].subject_id", message.subject_id)
        items = [_input(message) for message in request.records]
        key = request.idempotency_key
        views = await self._put(context, lambda s, who: records.put_records(s, self.ctx, who, items, key), key)
        return pb.PutRecordsResponse(records=[_record(view) for view in views])

    async def _put(
        self, context: aio.ServicerContext, work: Callable[[Session, CallerIdentity], T], idempotency_key: str
    ) -> T:
        try:
            return await self._run(context, work)
        except IntegrityError:
            if not idempotency_key:
                raise
            # Another call with this key committed first (the unique key refused ours): run again to
            # return its result, or refuse if its request differed.
            return await self._run(context, work)

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
        return pb.ListRecordsResponse(records=[_record(view) for view in views], next_page_token=token)

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
            context, lambda s, who: records.export_subject(s, self.ctx, who, request.subject_id, request.request_id)
        )
        digest = records.ExportDigest()

        def decrypt(start: int) -> list[pb.ExportSubjectResponse]:
            chunk = records.ExportPlan(
                plan.tenant_id, plan.subject_id, plan.rows[start : start + EXPORT_CHUNK], plan.sealer
            )
            out = []
            for view in records.iter_export(chunk):
                digest.update(view)
                out.append(pb.ExportSubjectResponse(record=_record(view)))
            return out

        for start in range(0, len(plan.rows), EXPORT_CHUNK):
            for item in await asyncio.to_thread(decrypt, start):
                yield item
        # The digest exists only once every record has been streamed, so the event has its own transaction.
        await self.db.run(
            lambda s: records.announce_export(s, self.ctx, plan.tenant_id, plan.subject_id, request.request_id, digest)
        )
        yield pb.ExportSubjectResponse(
            summary=pb.ExportSummary(record_count=digest.total, counts_by_kind=digest.counts, sha256=digest.hexdigest())
        )

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
