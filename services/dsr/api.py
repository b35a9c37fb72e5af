"""gRPC servicer of dsr: protobuf <-> domain objects, nothing else (rules live in requests.py and flows.py;
each call is one transaction on a worker thread).

SubmitRequest is the one call with a step outside the transaction: the subject's identifier is resolved by the
vault's blind index (:class:`SubjectResolver`) in memory, and only the subject id goes into the database.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from steward.dsr.v1 import dsr_pb2 as pb
from steward.dsr.v1 import dsr_pb2_grpc
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from services.chassis.db import Database
from services.chassis.errors import (
    InvalidArgument,
    PermissionDenied,
    Reason,
    Unavailable,
    UpstreamRefusal,
    error_reason,
)
from services.chassis.identity import CallerIdentity, identity_metadata, require_identity
from services.chassis.ids import valid_id
from services.chassis.timestamps import from_timestamp, to_timestamp
from services.dsr import evidence, flows, offboarding, requests
from services.dsr.models import DsrRequestRow, EvidenceRow, ShredCertificateRow, TenantClosureRow, TimelineRow
from services.dsr.requests import DsrContext, PolicyView, Submission
from services.dsr.retention import RetentionSweep, SweepItem

__all__ = ["DsrServicer", "SubjectResolver"]

T = TypeVar("T")
DEFAULT_PAGE = 100
MAX_PAGE = 500


class SubjectResolver:
    """Resolves an identifier to the vault's subject id with ``VaultService.ResolveSubject`` (over mTLS).

    The identifier lives only in this call's memory. The vault sees dsr as a service principal of the caller's
    tenant; "" means no subject matches.
    """

    def __init__(self, channel: aio.Channel | Callable[[], aio.Channel] | None, *, timeout_s: float) -> None:
        """``channel`` is the vault channel, or a function returning the current one (it changes when the
        certificate files are renewed: :meth:`services.gateway.forwarding.Upstreams.channel`)."""
        self._channel = (lambda: channel) if isinstance(channel, aio.Channel) else channel
        self._stub_channel: aio.Channel | None = None
        self._vault: vault_pb2_grpc.VaultServiceStub | None = None
        self.timeout_s = timeout_s

    @property
    def _stub(self) -> vault_pb2_grpc.VaultServiceStub | None:
        if self._channel is None:
            return None
        channel = self._channel()
        if channel is not self._stub_channel:
            self._stub_channel, self._vault = channel, vault_pb2_grpc.VaultServiceStub(channel)
        return self._vault

    async def resolve(self, tenant_id: str, field: str, raw: str) -> str:
        """The subject id, or "" when the vault knows no subject with that identifier."""
        if self._stub is None:
            raise Unavailable("the vault is not configured for dsr (STEWARD_DSR__UPSTREAMS__VAULT__ADDRESS)")
        who = CallerIdentity(tenant_id=tenant_id, principal="service:dsr", principal_kind="service")
        try:
            answer = await self._stub.ResolveSubject(
                vault_pb2.ResolveSubjectRequest(**{field: raw}), metadata=identity_metadata(who), timeout=self.timeout_s
            )
        except aio.AioRpcError as err:
            if error_reason(err) == Reason.SUBJECT_NOT_FOUND:
                return ""
            if (
                err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                and error_reason(err) is None
            ):
                raise Unavailable(
                    "the vault is unavailable; retry with backoff", reason=Reason.UPSTREAM_UNAVAILABLE
                ) from None
            raise UpstreamRefusal(err) from None
        return answer.subject_id


def _time(stamp: Timestamp, field: str) -> datetime | None:
    if not stamp.seconds and not stamp.nanos:
        return None
    return from_timestamp(stamp, field)


def _short(enum: Any, value: int) -> str:
    """A domain code from an enum value: REJECTION_REASON_EXCESSIVE -> EXCESSIVE; "" for 0 and unknown values."""
    if not value or value not in enum.values():
        return ""
    prefix = enum.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")
    return str(enum.Name(value)).removeprefix(prefix)


def _type_name(value: pb.RequestType.ValueType) -> str:
    return _short(pb.RequestType, value)


def _state_name(value: pb.RequestState.ValueType) -> str:
    if value not in pb.RequestState.values():
        raise InvalidArgument("state is not a known RequestState")
    return "" if value == pb.REQUEST_STATE_UNSPECIFIED else pb.RequestState.Name(value).removeprefix("REQUEST_STATE_")


def _message(row: DsrRequestRow, steps: list[TimelineRow] | None = None) -> pb.DsrRequest:
    message = pb.DsrRequest(
        request_id=row.request_id,
        tenant_id=row.tenant_id,
        type=pb.RequestType.Value(f"REQUEST_TYPE_{row.type}"),
        state=pb.RequestState.Value(f"REQUEST_STATE_{row.state}"),
        subject_id=row.subject_id,
        received_at=to_timestamp(requests.utc(row.received_at)),
        due_at=to_timestamp(requests.utc(row.due_at)),
        channel=row.channel,
        verification=pb.IdentityVerification(method=row.verification_method, verified_by=row.verified_by),
        is_minor=row.is_minor,
        extension_reason=pb.ExtensionReason.Value(f"EXTENSION_REASON_{row.extension_reason}")
        if row.extension_reason
        else pb.EXTENSION_REASON_UNSPECIFIED,
        reason_code=row.reason_code,
        hold_id=row.hold_id,
        updated_at=to_timestamp(requests.utc(row.updated_at)),
        completed_at=to_timestamp(requests.utc(row.completed_at)) if row.completed_at else None,
    )
    for step in steps or ():
        message.timeline.add(
            state=pb.RequestState.Value(f"REQUEST_STATE_{step.state}"),
            at=to_timestamp(requests.utc(step.at)),
            actor=step.actor,
            reason_code=step.reason_code,
        )
    return message


def _entry(row: EvidenceRow) -> pb.EvidenceEntry:
    return pb.EvidenceEntry(
        tenant_id=row.tenant_id,
        seq=row.seq,
        request_id=row.request_id,
        kind=row.kind,
        facts_json=row.facts_json,
        prev_hash=row.prev_hash,
        entry_hash=row.entry_hash,
        signature=row.signature,
        at=to_timestamp(requests.utc(row.at)),
    )


def _page_size(value: int) -> int:
    if value < 0 or value > MAX_PAGE:
        raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE} (0 = {DEFAULT_PAGE})")
    return value or DEFAULT_PAGE


def _page(rows: list[DsrRequestRow], size: int) -> dict[str, Any]:
    """A page's fields: the requests (without timelines) and the token of the next page ("" on the last)."""
    return {
        "requests": [_message(r) for r in rows],
        "next_page_token": rows[-1].request_id if len(rows) == size else "",
    }


def _policy(view: PolicyView) -> pb.TenantPolicy:
    return pb.TenantPolicy(
        approval_required=[pb.RequestType.Value(f"REQUEST_TYPE_{t}") for t in view.approval_required],
        minor_age_threshold=view.minor_age_threshold,
        grace_period_days=view.grace_period_days,
        retention=[pb.RetentionRule(record_kind=k, max_age_days=d) for k, d in sorted(view.retention.items())],
    )


def _wanted_policy(policy: pb.TenantPolicy) -> PolicyView:
    """The policy a SetPolicy asks for (validated by ``requests.set_policy``; one rule per kind)."""
    rules: dict[str, int] = {}
    for rule in policy.retention:
        if rule.record_kind in rules:
            raise InvalidArgument(
                "retention names a record kind twice; send one rule per kind",
                metadata={"field": "policy.retention.record_kind"},
            )
        rules[rule.record_kind] = rule.max_age_days
    types = tuple(_type_name(t) for t in policy.approval_required)
    return PolicyView(types, policy.minor_age_threshold, policy.grace_period_days, rules)


def _stamp(at: datetime | None) -> Timestamp | None:
    return to_timestamp(requests.utc(at)) if at is not None else None


def _sweep_item(item: SweepItem) -> pb.SweepItem:
    return pb.SweepItem(
        tenant_id=item.tenant_id,
        action=pb.SweepAction.Value(f"SWEEP_ACTION_{item.action}"),
        outcome=pb.SweepOutcome.Value(f"SWEEP_OUTCOME_{item.outcome}"),
        hold_id=item.hold_id,
        certificate_id=item.certificate_id,
        record_kind=item.record_kind,
        cutoff=_stamp(item.cutoff),
        shred_at=_stamp(item.shred_at),
        days_left=item.days_left,
        reason_code=item.reason_code,
    )


def _certificate(row: ShredCertificateRow) -> pb.ShredCertificate:
    return pb.ShredCertificate(
        certificate_id=row.certificate_id,
        tenant_id=row.tenant_id,
        key_id=row.key_id,
        key_deleted_at=_stamp(row.key_deleted_at),
        records_removed=row.records_removed,
        subjects_removed=row.subjects_removed,
        closed_at=_stamp(row.closed_at),
        vault_certificate_id=row.vault_certificate_id,
        audit_head=row.audit_head,
    )


def _offboarding(session: Session, row: TenantClosureRow, now: datetime) -> pb.TenantOffboarding:
    return pb.TenantOffboarding(
        tenant_id=row.tenant_id,
        state=pb.OffboardingState.Value(f"OFFBOARDING_STATE_{offboarding.closure_state(session, row, now)}"),
        closed_at=_stamp(row.closed_at),
        shred_at=_stamp(offboarding.shred_at(session, row)),
        hold_id=row.hold_id,
        certificate_id=row.certificate_id,
        shredded_at=_stamp(row.shredded_at),
        reminded_days_left=row.reminded_days,
    )


class DsrServicer(dsr_pb2_grpc.DsrServiceServicer):
    """DsrService over the domain modules."""

    def __init__(self, db: Database, ctx: DsrContext, resolver: SubjectResolver, sweep: RetentionSweep) -> None:
        self.db = db
        self.ctx = ctx
        self.resolver = resolver
        self.sweep = sweep

    async def _run(
        self,
        context: aio.ServicerContext,
        work: Callable[[Session, CallerIdentity], T],
        *,
        tenant_required: bool = True,
    ) -> T:
        identity = require_identity(context, tenant_required=tenant_required)
        return await self.db.run(lambda session: work(session, identity), timeout_s=context.time_remaining())

    async def _public_key(self, rows: list[EvidenceRow]) -> tuple[int, bytes | None]:
        """The signing key version of ``rows`` and its public key (read from Transit, never the database)."""
        version = max((r.key_version for r in rows), default=1)
        return version, await self.db.call(self.ctx.signer.public_key, version)

    async def SubmitRequest(
        self, request: pb.SubmitRequestRequest, context: aio.ServicerContext
    ) -> pb.SubmitRequestResponse:
        who = require_identity(context)
        sub = Submission.of(
            type=_type_name(request.type),
            received_at=_time(request.received_at, "received_at") if request.HasField("received_at") else None,
            channel=request.channel,
            verification_method=request.verification.method,
            verified_by=request.verification.verified_by,
            is_minor=request.is_minor,
            idempotency_key=request.idempotency_key,
            now=self.ctx.clock.now(),
        )
        field = request.subject.WhichOneof("identifier") or ""
        raw = getattr(request.subject, field) if field else ""
        requests.validate_identifier(field, raw)
        if sub.idempotency_key:
            earlier = await self.db.run(
                lambda s: requests.find_by_idempotency_key(s, who.tenant_id, sub.idempotency_key)
            )
            if earlier is not None:
                return pb.SubmitRequestResponse(request=_message(earlier), replayed=True)
        subject_id = await self.resolver.resolve(who.tenant_id, field, raw)
        del raw  # the identifier goes no further than this call
        try:
            row, replayed = await self.db.run(lambda s: flows.submit(s, self.ctx, who, sub, subject_id))
        except IntegrityError:
            # The same key submitted concurrently: the other call's request is the answer.
            row, replayed = await self.db.run(lambda s: flows.submit(s, self.ctx, who, sub, subject_id))
        return pb.SubmitRequestResponse(request=_message(row), replayed=replayed)

    async def GetRequest(self, request: pb.GetRequestRequest, context: aio.ServicerContext) -> pb.GetRequestResponse:
        def work(s: Session, who: CallerIdentity) -> pb.DsrRequest:
            row = requests.get(s, who.tenant_id, request.request_id)
            return _message(row, requests.timeline(s, row.request_id))

        return pb.GetRequestResponse(request=await self._run(context, work))

    async def ListRequests(
        self, request: pb.ListRequestsRequest, context: aio.ServicerContext
    ) -> pb.ListRequestsResponse:
        size = _page_size(request.page_size)
        after = valid_id("page_token", request.page_token)
        state = _state_name(request.state)
        due_before = _time(request.due_before, "due_before") if request.HasField("due_before") else None
        rows = await self._run(
            context,
            lambda s, who: requests.list_requests(
                s,
                who.tenant_id,
                state=state,
                due_before=due_before,
                overdue_only=request.overdue_only,
                now=self.ctx.clock.now(),
                page_size=size,
                after=after,
            ),
        )
        return pb.ListRequestsResponse(**_page(rows, size))

    async def ApproveRequest(
        self, request: pb.ApproveRequestRequest, context: aio.ServicerContext
    ) -> pb.ApproveRequestResponse:
        row = await self._run(context, lambda s, who: flows.approve(s, self.ctx, who, request.request_id))
        return pb.ApproveRequestResponse(request=_message(row))

    async def RejectRequest(
        self, request: pb.RejectRequestRequest, context: aio.ServicerContext
    ) -> pb.RejectRequestResponse:
        reason = _short(pb.RejectionReason, request.reason)
        row = await self._run(context, lambda s, who: requests.reject(s, self.ctx, who, request.request_id, reason))
        return pb.RejectRequestResponse(request=_message(row))

    async def CancelRequest(
        self, request: pb.CancelRequestRequest, context: aio.ServicerContext
    ) -> pb.CancelRequestResponse:
        row = await self._run(context, lambda s, who: requests.cancel(s, self.ctx, who, request.request_id))
        return pb.CancelRequestResponse(request=_message(row))

    async def ExtendDeadline(
        self, request: pb.ExtendDeadlineRequest, context: aio.ServicerContext
    ) -> pb.ExtendDeadlineResponse:
        reason = _short(pb.ExtensionReason, request.reason)
        row = await self._run(
            context,
            lambda s, who: requests.extend(s, self.ctx, who, request.request_id, reason, request.additional_months),
        )
        return pb.ExtendDeadlineResponse(request=_message(row))

    async def GetEvidence(self, request: pb.GetEvidenceRequest, context: aio.ServicerContext) -> pb.GetEvidenceResponse:
        def work(s: Session, who: CallerIdentity) -> list[EvidenceRow]:
            row = requests.get(s, who.tenant_id, request.request_id)
            return evidence.entries_for(s, who.tenant_id, row.request_id)

        rows = await self._run(context, work)
        version, public_key = await self._public_key(rows)
        return pb.GetEvidenceResponse(
            entries=[_entry(r) for r in rows],
            public_key=base64_key(public_key),
            key_name=self.ctx.signer.key_name,
            key_version=version,
        )

    async def VerifyEvidence(
        self, request: pb.VerifyEvidenceRequest, context: aio.ServicerContext
    ) -> pb.VerifyEvidenceResponse:
        def work(s: Session, who: CallerIdentity) -> list[EvidenceRow]:
            row = requests.get(s, who.tenant_id, request.request_id)
            own = evidence.entries_for(s, who.tenant_id, row.request_id)
            # The whole tenant chain up to this request's last entry: every link on the way is checked too.
            return evidence.tenant_chain_until(s, who.tenant_id, own[-1].seq) if own else []

        rows = await self._run(context, work)
        _version, public_key = await self._public_key(rows)
        report = evidence.verify_entries([evidence.EntryView.of(r) for r in rows], public_key)
        return pb.VerifyEvidenceResponse(
            valid=report.valid, entries_checked=report.checked, failed_seq=report.failed_seq, failure=report.failure
        )

    async def GetPolicy(self, request: pb.GetPolicyRequest, context: aio.ServicerContext) -> pb.GetPolicyResponse:
        view = await self._run(context, lambda s, who: requests.get_policy(s, who.tenant_id))
        return pb.GetPolicyResponse(policy=_policy(view))

    async def SetPolicy(self, request: pb.SetPolicyRequest, context: aio.ServicerContext) -> pb.SetPolicyResponse:
        wanted = _wanted_policy(request.policy)
        view = await self._run(context, lambda s, who: requests.set_policy(s, self.ctx, who.tenant_id, wanted))
        return pb.SetPolicyResponse(policy=_policy(view))

    async def ListOverdue(self, request: pb.ListOverdueRequest, context: aio.ServicerContext) -> pb.ListOverdueResponse:
        size = _page_size(request.page_size)
        after = valid_id("page_token", request.page_token)
        rows = await self._run(
            context,
            lambda s, who: requests.list_overdue(
                s, who.tenant_id, now=self.ctx.clock.now(), page_size=size, after=after
            ),
            tenant_required=False,
        )
        return pb.ListOverdueResponse(**_page(rows, size))

    async def RunRetentionSweep(
        self, request: pb.RunRetentionSweepRequest, context: aio.ServicerContext
    ) -> pb.RunRetentionSweepResponse:
        identity = require_identity(context, tenant_required=False)
        if identity.principal_kind != "operator":
            raise PermissionDenied("RunRetentionSweep spans every tenant: only operators (ops:admin) may call it")
        items = await self.sweep.run(dry_run=request.dry_run)
        return pb.RunRetentionSweepResponse(items=[_sweep_item(i) for i in items], dry_run=request.dry_run)

    async def GetShredCertificate(
        self, request: pb.GetShredCertificateRequest, context: aio.ServicerContext
    ) -> pb.GetShredCertificateResponse:
        certificate, entry = await self._run(context, lambda s, who: offboarding.get_certificate(s, who.tenant_id))
        version, public_key = await self._public_key([entry])
        return pb.GetShredCertificateResponse(
            certificate=_certificate(certificate),
            entry=_entry(entry),
            public_key=base64_key(public_key),
            key_name=self.ctx.signer.key_name,
            key_version=version,
        )

    async def ListOffboarding(
        self, request: pb.ListOffboardingRequest, context: aio.ServicerContext
    ) -> pb.ListOffboardingResponse:
        size = _page_size(request.page_size)
        after = valid_id("page_token", request.page_token)

        def work(s: Session, who: CallerIdentity) -> pb.ListOffboardingResponse:
            rows = offboarding.list_closures(s, who.tenant_id, page_size=size, after=after)
            now = self.ctx.clock.now()
            return pb.ListOffboardingResponse(
                tenants=[_offboarding(s, r, now) for r in rows],
                next_page_token=rows[-1].tenant_id if len(rows) == size else "",
            )

        return await self._run(context, work, tenant_required=False)


def base64_key(public_key: bytes | None) -> str:
    """The raw public key as base64 (empty when Transit has no such key version)."""
    return base64.b64encode(public_key).decode("ascii") if public_key else ""
