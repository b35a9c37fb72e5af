"""LegalRequestService servicer (steward.legal.v1), served by the gateway: proto <-> domain, the vault calls.

Identifiers named in a request are resolved in the tenant's vault as soon as it is recorded and dropped: the
register (``services.gateway.legal``) keeps subject ids. Execution streams exactly the approved subjects'
records of the approved kinds and window from the vault's ExportSubject, each export made under the request's
legal grant (audited by the vault with the grant id, and recorded as a support access by the gateway).
:class:`LegalNoticeWatcher` releases withheld notices when their order's date passes and reminds operators of
review dates, on the injected clock.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from grpc import aio
from sqlalchemy.orm import Session
from steward.legal.v1 import legal_pb2, legal_pb2_grpc
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.db import Database
from services.chassis.errors import InvalidArgument, NotFound, PermissionDenied, Reason
from services.chassis.identity import CallerIdentity, identity_metadata
from services.chassis.ids import valid_id
from services.chassis.tasks import PeriodicTask
from services.chassis.timestamps import from_timestamp, to_timestamp
from services.chassis.upstreams import Upstreams
from services.gateway import grants, legal, tenants
from services.gateway.caller import Caller, current_caller
from services.gateway.forwarding import DeadlinePolicy, upstream_error
from services.gateway.models import LegalRequestRow

__all__ = ["LegalNoticeWatcher", "LegalRequestServicer"]

log = logging.getLogger("steward.gateway.legal")

_VAULT = "/steward.vault.v1.VaultService/"
_STATES = {
    "recorded": legal_pb2.LEGAL_REQUEST_STATE_RECORDED,
    "approved": legal_pb2.LEGAL_REQUEST_STATE_APPROVED,
    "rejected": legal_pb2.LEGAL_REQUEST_STATE_REJECTED,
    "executed": legal_pb2.LEGAL_REQUEST_STATE_EXECUTED,
}
_STATE_NAMES = {number: name for name, number in _STATES.items()}


def _request_to_proto(row: LegalRequestRow) -> legal_pb2.LegalRequest:
    return legal_pb2.LegalRequest(
        legal_request_id=row.id,
        tenant_id=row.tenant_id,
        authority=row.authority,
        authority_type=row.authority_type,  # type: ignore[arg-type]
        legal_basis=row.legal_basis,
        reference_number=row.reference_number,
        subject_ids=row.subject_ids.split(),
        window_start=to_timestamp(row.window_start),
        window_end=to_timestamp(row.window_end),
        data_categories=[int(kind) for kind in row.data_categories.split()],  # type: ignore[misc]
        nondisclosure=legal_pb2.NondisclosureOrder(
            kind=row.ndo_kind,  # type: ignore[arg-type]
            until=to_timestamp(row.ndo_until),
            review_at=to_timestamp(row.review_at),
        ),
        state=_STATES[row.state],
        recorded_by=row.recorded_by,
        recorded_at=to_timestamp(row.recorded_at),
        decided_by=row.decided_by,
        decided_at=to_timestamp(row.decided_at),
        rejection_reason=row.rejection_reason,
        executed_by=row.executed_by,
        executed_at=to_timestamp(row.executed_at),
        grant_id=row.grant_id,
        notice_released_at=to_timestamp(row.notice_released_at),
        records_disclosed=row.records_disclosed,
    )


def _optional_time(message: Any, field: str, name: str) -> datetime | None:
    return from_timestamp(getattr(message, field), name) if message.HasField(field) else None


def _one_identifier(ids: vault_pb2.SubjectIdentifiers, where: str) -> vault_pb2.ResolveSubjectRequest:
    named = [
        (field, value)
        for field, value in (("email", ids.email), ("phone", ids.phone), ("external_id", ids.external_id))
        if value
    ]
    if len(named) != 1:
        raise InvalidArgument(f"{where}: give exactly one identifier (email, phone or external_id)")
    field, value = named[0]
    return vault_pb2.ResolveSubjectRequest(**{field: value})


class LegalRequestServicer(legal_pb2_grpc.LegalRequestServiceServicer):
    """Record, approve, reject, execute and report legal disclosure requests."""

    def __init__(
        self, *, db: Database, upstreams: Upstreams, deadlines: DeadlinePolicy, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.db = db
        self.upstreams = upstreams
        self.deadlines = deadlines
        self.clock = clock

    def _vault(self) -> vault_pb2_grpc.VaultServiceStub:
        return vault_pb2_grpc.VaultServiceStub(self.upstreams.channel("vault"))  # type: ignore[no-untyped-call]

    @staticmethod
    def _identity(caller: Caller, tenant_id: str, grant_id: str = "") -> tuple[tuple[str, str], ...]:
        return identity_metadata(
            CallerIdentity(
                tenant_id=tenant_id,
                principal=caller.principal,
                principal_kind=caller.kind,
                credential_id=caller.credential_id,
                support_grant_id=grant_id,
            )
        )

    async def _resolve(self, caller: Caller, tenant_id: str, subjects: Any, field: str) -> list[str]:
        """Vault subject ids of ``subjects`` in ``tenant_id``; an identifier the tenant does not have (another
        tenant's subject included) refuses the whole call, naming its position only."""
        lookups = [_one_identifier(ids, f"{field}[{i}]") for i, ids in enumerate(subjects)]
        timeout = self.deadlines.cap_for(_VAULT + "ResolveSubject")
        found = []
        for index, lookup in enumerate(lookups):
            try:
                answer = await self._vault().ResolveSubject(
                    lookup, metadata=self._identity(caller, tenant_id), timeout=timeout
                )
            except aio.AioRpcError as err:
                error = upstream_error(err, upstream="vault", cap=timeout)
                if error.reason == Reason.SUBJECT_NOT_FOUND:
                    raise NotFound(
                        f"{field}[{index}] names no subject of this tenant",
                        reason=Reason.SUBJECT_NOT_FOUND,
                        metadata={"field": f"{field}[{index}]"},
                    ) from None
                raise error from None
            found.append(answer.subject_id)
        return found

    async def RecordLegalRequest(
        self, request: legal_pb2.RecordLegalRequestRequest, context: aio.ServicerContext
    ) -> legal_pb2.RecordLegalRequestResponse:
        caller = current_caller()
        valid_id("tenant_id", request.tenant_id)
        if not request.tenant_id:
            raise InvalidArgument("tenant_id is required: the tenant whose data is requested")
        if not request.HasField("window_start") or not request.HasField("window_end"):
            raise InvalidArgument("window_start and window_end are required, with window_start before window_end")
        ndo = request.nondisclosure
        now = self.clock.now()
        checked = legal.validate(
            legal.NewLegalRequest(
                tenant_id=request.tenant_id,
                authority=request.authority,
                authority_type=int(request.authority_type),
                legal_basis=request.legal_basis,
                reference_number=request.reference_number,
                window_start=from_timestamp(request.window_start, "window_start"),
                window_end=from_timestamp(request.window_end, "window_end"),
                data_categories=tuple(int(kind) for kind in request.data_categories),
                ndo_kind=int(ndo.kind),
                ndo_until=_optional_time(ndo, "until", "nondisclosure.until"),
                review_at=_optional_time(ndo, "review_at", "nondisclosure.review_at"),
            ),
            subject_count=len(request.subjects),
            now=now,
        )
        await self.db.run(lambda s: tenants.get_tenant(s, request.tenant_id))
        subject_ids = await self._resolve(caller, request.tenant_id, request.subjects, "subjects")
        row = await self.db.run(
            lambda s: legal.record_request(s, checked, subject_ids=subject_ids, by=caller.principal, now=now)
        )
        log.info("legal request recorded", extra={"legal_request_id": row.id, "tenant_id": row.tenant_id})
        return legal_pb2.RecordLegalRequestResponse(legal_request=_request_to_proto(row))

    async def _decide(self, work: Callable[[Session], LegalRequestRow]) -> legal_pb2.LegalRequest:
        return _request_to_proto(await self.db.run(work))

    async def ApproveLegalRequest(
        self, request: legal_pb2.ApproveLegalRequestRequest, context: aio.ServicerContext
    ) -> legal_pb2.ApproveLegalRequestResponse:
        caller = current_caller()
        valid_id("legal_request_id", request.legal_request_id)
        now = self.clock.now()
        decided = await self._decide(lambda s: legal.approve(s, request.legal_request_id, by=caller.principal, now=now))
        return legal_pb2.ApproveLegalRequestResponse(legal_request=decided)

    async def RejectLegalRequest(
        self, request: legal_pb2.RejectLegalRequestRequest, context: aio.ServicerContext
    ) -> legal_pb2.RejectLegalRequestResponse:
        caller = current_caller()
        valid_id("legal_request_id", request.legal_request_id)
        now = self.clock.now()
        decided = await self._decide(
            lambda s: legal.reject(s, request.legal_request_id, by=caller.principal, reason=request.reason, now=now)
        )
        return legal_pb2.RejectLegalRequestResponse(legal_request=decided)

    async def ExecuteLegalRequest(
        self, request: legal_pb2.ExecuteLegalRequestRequest, context: aio.ServicerContext
    ) -> AsyncIterator[legal_pb2.ExecuteLegalRequestResponse]:
        caller = current_caller()
        valid_id("legal_request_id", request.legal_request_id)
        row = await self.db.run(lambda s: legal.find_request(s, request.legal_request_id))
        legal.require_state(row, "executed", "approved")  # before any vault call resolves a narrowing subject
        scope = row.subject_ids.split()
        chosen = scope
        if request.only_subjects:
            named = await self._resolve(caller, row.tenant_id, request.only_subjects, "only_subjects")
            outside = [i for i, subject in enumerate(named) if subject not in scope]
            if outside:
                raise PermissionDenied(
                    f"only_subjects[{outside[0]}] is outside the approved scope of this request; nothing was exported",
                    reason=Reason.OUT_OF_SCOPE,
                    metadata={"field": f"only_subjects[{outside[0]}]"},
                )
            chosen = [subject for subject in scope if subject in set(named)]
        now = self.clock.now()
        row, grant_id = await self.db.run(lambda s: legal.begin_execution(s, row.id, by=caller.principal, now=now))
        kinds = {int(kind) for kind in row.data_categories.split()}
        counts: Counter[str] = Counter()
        timeout = self.deadlines.cap_for(_VAULT + "ExportSubject")
        try:
            for subject_id in chosen:
                seq = await self.db.run(lambda s: self._open_access(s, grant_id))
                status = "OK"
                try:
                    stream = self._vault().ExportSubject(
                        vault_pb2.ExportSubjectRequest(subject_id=subject_id, request_id=row.id),
                        metadata=self._identity(caller, row.tenant_id, grant_id),
                        timeout=timeout,
                    )
                    async for item in stream:
                        if item.WhichOneof("item") != "record":
                            continue
                        record = item.record
                        created = record.created_at.ToDatetime(tzinfo=UTC)
                        if int(record.kind) in kinds and row.window_start <= created < row.window_end:
                            counts[vault_pb2.RecordKind.Name(record.kind)] += 1
                            yield legal_pb2.ExecuteLegalRequestResponse(
                                record=legal_pb2.DisclosedRecord(subject_id=subject_id, record=record)
                            )
                except aio.AioRpcError as err:
                    status = err.code().name
                    raise upstream_error(err, upstream="vault", cap=timeout) from None
                finally:
                    await self.db.run(partial(grants.complete_access, seq=seq, status=status, latency_ms=0))
        except BaseException:
            # A failed or cancelled export leaves nothing live: the grant ends, the request stays APPROVED.
            await self.db.run(lambda s: legal.abandon_execution(s, row.id, grant_id, now=self.clock.now()))
            raise
        done = self.clock.now()
        total = sum(counts.values())
        final = await self.db.run(
            lambda s: legal.finish_execution(s, row.id, grant_id=grant_id, by=caller.principal, records=total, now=done)
        )
        log.info("legal request executed", extra={"legal_request_id": final.id, "records": total})
        yield legal_pb2.ExecuteLegalRequestResponse(
            summary=legal_pb2.ExecutionSummary(
                legal_request=_request_to_proto(final), subjects=len(chosen), records=total, counts_by_kind=counts
            )
        )

    def _open_access(self, session: Session, grant_id: str) -> int:
        grant = grants.find_grant(session, grant_id)
        return grants.record_access(session, grant=grant, method=_VAULT + "ExportSubject", now=self.clock.now())

    async def ListLegalRequests(
        self, request: legal_pb2.ListLegalRequestsRequest, context: aio.ServicerContext
    ) -> legal_pb2.ListLegalRequestsResponse:
        valid_id("tenant_id", request.tenant_id)
        if request.state and request.state not in _STATE_NAMES:
            raise InvalidArgument("state: choose one of the LegalRequestState values")
        state = _STATE_NAMES.get(request.state, "")
        rows = await self.db.run(lambda s: legal.list_requests(s, tenant_id=request.tenant_id, state=state))
        return legal_pb2.ListLegalRequestsResponse(legal_requests=[_request_to_proto(r) for r in rows])

    async def TransparencyReport(
        self, request: legal_pb2.TransparencyReportRequest, context: aio.ServicerContext
    ) -> legal_pb2.TransparencyReportResponse:
        if request.year and not 2000 <= request.year <= 9999:
            raise InvalidArgument("year: 0 for every year, or a year from 2000")
        counts = await self.db.run(lambda s: legal.transparency(s, year=request.year))
        return legal_pb2.TransparencyReportResponse(
            rows=[
                legal_pb2.TransparencyRow(
                    quarter=c.quarter,
                    authority_type=c.authority_type,  # type: ignore[arg-type]
                    outcome=c.outcome,
                    requests=c.requests,
                    subjects=c.subjects,
                )
                for c in counts
            ]
        )


class LegalNoticeWatcher(PeriodicTask):
    """Every ``interval_s``: release notices whose order date passed (LegalNoticeReleased) and remind operators
    of review dates that came (a warning log line and the ``steward_legal_reviews_due_total`` counter)."""

    def __init__(self, db: Database, *, clock: Clock, interval_s: float, reviews_counter: Any = None) -> None:
        super().__init__("legal-notice-watcher", interval_s=interval_s)
        self.db = db
        self.clock = clock
        self.reviews_counter = reviews_counter
        self.released: list[str] = []
        self.reminded: list[str] = []

    def _scan(self, session: Session) -> tuple[list[str], list[str]]:
        now = self.clock.now()
        return legal.release_due(session, now=now), legal.reviews_due(session, now=now)

    async def scan_once(self) -> tuple[list[str], list[str]]:
        """One scan; (released, reminded) request ids."""
        released, reminded = await self.db.run(self._scan)
        self.released.extend(released)
        self.reminded.extend(reminded)
        for request_id in reminded:
            log.warning("legal request non-disclosure order due for review", extra={"legal_request_id": request_id})
            if self.reviews_counter is not None:
                self.reviews_counter.add(1)
        return released, reminded

    async def once(self) -> int:
        """One scan; how many notices were released and reviews reminded."""
        released, reminded = await self.scan_once()
        return len(released) + len(reminded)
