"""The operators' side of NotifyService (breaches, their impact, policy-change campaigns) and the tenants'
breach acknowledgement: protobuf <-> the domain modules (:mod:`breach`, :mod:`impact`, :mod:`campaigns`).

:class:`BreachApi` is attached to the servicer by ``main.assemble`` (:func:`attach`); the servicer's methods
delegate to it in one line (:func:`of`). Operators' methods need an operator identity (the gateway's policy
allows ops roles only; this is the second check).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from grpc import aio
from steward.notify.v1 import notify_pb2 as pb

from services.chassis.bus import Consumer
from services.chassis.db import Database
from services.chassis.errors import DomainError, InvalidArgument, PermissionDenied, Reason, Unavailable
from services.chassis.identity import CallerIdentity, require_identity
from services.chassis.ids import is_reference, is_tenant_id, valid_id
from services.chassis.timestamps import from_timestamp, time_window, to_timestamp
from services.notify import campaigns, impact
from services.notify.breach import BreachDesk, BreachDraft, BreachRenotifier, BreachView, TenantStatus
from services.notify.deliveries import DeliveryContext, DeliveryEngine
from services.notify.impact import AccessLogPurger, Impact, TouchedSubjects
from services.notify.unsubscribe import MAX_TOKEN_CHARS

__all__ = ["BreachApi", "ack_key", "attach", "of"]

DEFAULT_PAGE = 100
MAX_PAGE = 500
MAX_TENANTS = 100_000
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_POLICY_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_STATE = {
    pb.BREACH_STATE_DECLARED: "DECLARED",
    pb.BREACH_STATE_CONTAINED: "CONTAINED",
    pb.BREACH_STATE_CLOSED: "CLOSED",
}
_STATE_ENUM = {v: k for k, v in _STATE.items()}
_ATTR = "breach_api"
# Detection times may be a little ahead of our clock (another host's clock); more is a typo.
_CLOCK_SKEW = timedelta(minutes=5)
# ImpactedTenant.subjects_unavailable_reason when the vault could not list the subjects (see notify.proto).
_VAULT_NOT_CONFIGURED = "vault_not_configured"
_VAULT_UNAVAILABLE = "vault_unavailable"


def ack_key(hash_key: bytes) -> bytes:
    """The key of ack-link tokens, derived from notify's recipient-hash key (one secret to configure)."""
    return hmac.new(hash_key, b"notify.breach-ack-key.v1", hashlib.sha256).digest()


def attach(servicer: object, api: BreachApi) -> None:
    """Give the servicer its breach and campaign side."""
    setattr(servicer, _ATTR, api)


def of(servicer: object) -> BreachApi:
    """The breach and campaign side attached to ``servicer``."""
    return cast(BreachApi, getattr(servicer, _ATTR))


def _stamp(value: datetime | None) -> Any:
    if value is None:
        return None
    return to_timestamp(value if value.tzinfo else value.replace(tzinfo=UTC))


def _text(value: str, field: str, limit: int) -> str:
    value = value.strip()
    if not value or len(value) > limit:
        raise InvalidArgument(f"{field} is required, at most {limit} characters", metadata={"field": field})
    return value


def _page(size: int, token: str) -> tuple[int, str]:
    if size < 0 or size > MAX_PAGE:
        raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE} (0 = {DEFAULT_PAGE})")
    return size or DEFAULT_PAGE, valid_id("page_token", token)


def _ack(status: TenantStatus) -> pb.TenantAcknowledgement:
    return pb.TenantAcknowledgement(
        tenant_id=status.tenant_id,
        acknowledged=status.acknowledged_at is not None,
        acknowledged_at=_stamp(status.acknowledged_at),
        notices_sent=status.deliveries_sent,
    )


def _breach(view: BreachView) -> pb.Breach:
    row = view.row
    return pb.Breach(
        breach_id=row.breach_id,
        nature=row.nature,
        data_categories=view.data_categories,
        tenant_ids=[t.tenant_id for t in view.tenants],
        all_tenants=row.all_tenants,
        detected_at=_stamp(row.detected_at),
        contact_point=row.contact_point,
        measures=row.measures,
        state=_STATE_ENUM[row.state],
        declared_at=_stamp(row.declared_at),
        regulator_deadline=_stamp(view.regulator_deadline),
        cert_in_deadline=_stamp(view.cert_in_deadline),
        acknowledgements=[_ack(t) for t in view.tenants],
    )


def _campaign(view: campaigns.CampaignView) -> pb.Campaign:
    return pb.Campaign(
        campaign_id=view.row.campaign_id,
        policy_version=view.row.policy_version,
        effective_at=_stamp(view.row.effective_at),
        announced_at=_stamp(view.row.announced_at),
        tenants=[
            pb.CampaignTenant(tenant_id=t.tenant_id, delivered=t.delivered, failed=t.failed, pending=t.pending)
            for t in view.tenants
        ],
    )


def _idempotency_key(value: str) -> str:
    if not value:
        raise InvalidArgument(
            "idempotency_key is required: the same key never notifies twice", reason=Reason.IDEMPOTENCY_KEY_REQUIRED
        )
    if not is_reference(value):
        raise InvalidArgument(
            "idempotency_key must be 1-128 letters, digits or . _ : -",
            reason=Reason.MALFORMED_ID,
            metadata={"field": "idempotency_key"},
        )
    return value


class BreachApi:
    """DeclareBreach, UpdateBreach, GetBreach, ListBreaches, AcknowledgeBreach, BreachImpact,
    AnnouncePolicyChange and ListCampaigns over a :class:`BreachDesk`."""

    def __init__(self, db: Database, ctx: DeliveryContext, desk: BreachDesk, engine: DeliveryEngine | None) -> None:
        self.db = db
        self.ctx = ctx
        self.desk = desk
        self.engine = engine
        # Set by breach_runtime.start_breach_side (tests drive them after moving the clock).
        self.renotifier: BreachRenotifier | None = None
        self.purger: AccessLogPurger | None = None
        self.access_consumer: Consumer | None = None
        # Subjects a principal touched, from the vault's audit; None when notify has no vault upstream.
        self.touched: TouchedSubjects | None = None

    def _operator(self, context: aio.ServicerContext) -> CallerIdentity:
        who = require_identity(context, tenant_required=False)
        if who.principal_kind != "operator":
            raise PermissionDenied("this method is for Steward's operators", reason=Reason.OPERATOR_REQUIRED)
        return who

    def _wake(self) -> None:
        if self.engine is not None:
            self.engine.wake()

    # -- breaches ------------------------------------------------------------------------------------------

    def _draft(self, request: pb.DeclareBreachRequest, who: CallerIdentity) -> BreachDraft:
        key = _idempotency_key(request.idempotency_key)
        nature = _text(request.nature, "nature", 2000)
        if not request.data_categories or len(request.data_categories) > 20:
            raise InvalidArgument("data_categories: name 1 to 20 categories", metadata={"field": "data_categories"})
        for category in request.data_categories:
            if not _CODE.fullmatch(category):
                raise InvalidArgument(
                    "each data category is a code: lower-case letters, digits, '_' (e.g. contact_details)",
                    metadata={"field": "data_categories"},
                )
        if bool(request.tenant_ids) == request.all_tenants:
            raise InvalidArgument(
                "name the affected tenants in tenant_ids, or set all_tenants (not both)",
                reason=Reason.TENANTS_REQUIRED,
            )
        if len(request.tenant_ids) > MAX_TENANTS:
            raise InvalidArgument(
                f"at most {MAX_TENANTS} tenant_ids; use all_tenants", metadata={"field": "tenant_ids"}
            )
        for tenant_id in request.tenant_ids:
            if not is_tenant_id(tenant_id):
                raise InvalidArgument(
                    "tenant_ids holds something that is not a tenant id",
                    reason=Reason.MALFORMED_ID,
                    metadata={"field": "tenant_ids"},
                )
        if not request.HasField("detected_at"):
            raise InvalidArgument(
                "detected_at is required: the controllers' clocks run from it", metadata={"field": "detected_at"}
            )
        detected_at = from_timestamp(request.detected_at, "detected_at")
        if detected_at > self.ctx.clock.now() + _CLOCK_SKEW:
            raise InvalidArgument("detected_at is in the future", metadata={"field": "detected_at"})
        return BreachDraft(
            nature=nature,
            data_categories=tuple(request.data_categories),
            tenant_ids=tuple(request.tenant_ids),
            all_tenants=request.all_tenants,
            detected_at=detected_at,
            contact_point=_text(request.contact_point, "contact_point", 256),
            measures=_text(request.measures, "measures", 4000),
            idempotency_key=key,
            declared_by=who.principal,
        )

    async def declare(self, request: pb.DeclareBreachRequest, context: aio.ServicerContext) -> pb.DeclareBreachResponse:
        """Record the breach and notify every affected tenant's contacts at once (critical lane)."""
        draft = self._draft(request, self._operator(context))

        def work(session: Any) -> BreachView:
            row, _planned, _replayed = self.desk.declare(session, draft)
            return self.desk.view(session, row.breach_id)

        view = await self.db.run(work, timeout_s=context.time_remaining())
        self._wake()
        return pb.DeclareBreachResponse(breach=_breach(view))

    async def update(self, request: pb.UpdateBreachRequest, context: aio.ServicerContext) -> pb.UpdateBreachResponse:
        """New measures, a state forward, or an acknowledgement an operator received otherwise."""
        self._operator(context)
        valid_id("breach_id", request.breach_id)
        if request.state not in pb.BreachState.values():
            raise InvalidArgument("state is not a known BreachState", metadata={"field": "state"})
        state = _STATE.get(request.state, "")
        measures = request.measures.strip()
        if len(measures) > 4000:
            raise InvalidArgument("measures: at most 4000 characters", metadata={"field": "measures"})
        ack_tenant = request.acknowledge_tenant_id
        if ack_tenant and not is_tenant_id(ack_tenant):
            raise InvalidArgument(
                "acknowledge_tenant_id is not a tenant id",
                reason=Reason.MALFORMED_ID,
                metadata={"field": "acknowledge_tenant_id"},
            )
        if not (state or measures or ack_tenant):
            raise InvalidArgument("nothing to update: give measures, a state or acknowledge_tenant_id")

        def work(session: Any) -> BreachView:
            if state or measures:
                self.desk.update(session, request.breach_id, measures=measures, state=state)
            if ack_tenant:
                self.desk.acknowledge(session, request.breach_id, ack_tenant, "operator")
            return self.desk.view(session, request.breach_id)

        view = await self.db.run(work, timeout_s=context.time_remaining())
        return pb.UpdateBreachResponse(breach=_breach(view))

    async def get(self, request: pb.GetBreachRequest, context: aio.ServicerContext) -> pb.GetBreachResponse:
        """The breach, its deadlines and each tenant's notices and acknowledgement."""
        self._operator(context)
        valid_id("breach_id", request.breach_id)
        view = await self.db.run(lambda s: self.desk.view(s, request.breach_id), timeout_s=context.time_remaining())
        return pb.GetBreachResponse(breach=_breach(view))

    async def list(self, request: pb.ListBreachesRequest, context: aio.ServicerContext) -> pb.ListBreachesResponse:
        """A page of breaches."""
        self._operator(context)
        size, after = _page(request.page_size, request.page_token)
        views = await self.db.run(
            lambda s: self.desk.list(s, page_size=size, after=after), timeout_s=context.time_remaining()
        )
        return pb.ListBreachesResponse(
            breaches=[_breach(v) for v in views],
            next_page_token=views[-1].row.breach_id if len(views) == size else "",
        )

    async def acknowledge(
        self, request: pb.AcknowledgeBreachRequest, context: aio.ServicerContext
    ) -> pb.AcknowledgeBreachResponse:
        """The calling tenant acknowledges with its ack link's token."""
        who = require_identity(context)
        valid_id("breach_id", request.breach_id)
        if not request.token or len(request.token) > MAX_TOKEN_CHARS:
            raise InvalidArgument(
                "token is required: the token= value of the ack link in the notice",
                reason=Reason.BREACH_ACK_TOKEN_INVALID,
                metadata={"field": "token"},
            )

        def work(session: Any) -> pb.TenantAcknowledgement:
            self.desk.acknowledge_with_token(session, request.breach_id, who.tenant_id, request.token)
            view = self.desk.view(session, request.breach_id)
            return next(_ack(t) for t in view.tenants if t.tenant_id == who.tenant_id)

        ack = await self.db.run(work, timeout_s=context.time_remaining())
        return pb.AcknowledgeBreachResponse(acknowledgement=ack)

    # -- impact --------------------------------------------------------------------------------------------

    async def impact(self, request: pb.BreachImpactRequest, context: aio.ServicerContext) -> pb.BreachImpactResponse:
        """Which tenants (and subjects) a credential or principal touched in the window."""
        self._operator(context)
        if bool(request.credential_id) == bool(request.principal):
            raise InvalidArgument("give exactly one of credential_id or principal", reason=Reason.IDENTIFIER_REQUIRED)
        if len(request.credential_id) > 128 or len(request.principal) > 256:
            raise InvalidArgument("credential_id or principal is too long", reason=Reason.MALFORMED_ID)
        start, end = time_window(request)
        found = await self.db.run(
            lambda s: impact.impact(
                s, credential_id=request.credential_id, principal=request.principal, start=start, end=end
            ),
            timeout_s=context.time_remaining(),
        )
        tenants: list[pb.ImpactedTenant] = []
        for each in found:
            # Once the vault is unreachable, the other tenants do not each wait out its timeout.
            vault_down = bool(tenants) and tenants[-1].subjects_unavailable_reason == _VAULT_UNAVAILABLE
            tenants.append(await self._with_subjects(each, start, end, vault_down=vault_down))
        return pb.BreachImpactResponse(tenants=tenants)

    async def _with_subjects(
        self, found: Impact, start: datetime, end: datetime, *, vault_down: bool
    ) -> pb.ImpactedTenant:
        """The tenant's entry, its subjects asked of the vault for each principal the access log names for it (a
        credential id is one principal, ``apikey:<id>``); when the vault cannot answer, the tenant is still listed
        with the reason its subjects are missing."""
        subjects = set(found.subject_ids)
        unavailable = ""
        if self.touched is None:
            unavailable = _VAULT_NOT_CONFIGURED
        elif vault_down:
            unavailable = _VAULT_UNAVAILABLE
        else:
            try:
                for principal in found.principals:
                    subjects.update(await self.touched.touched_subjects(found.tenant_id, principal, start, end))
            except Unavailable:
                unavailable = _VAULT_UNAVAILABLE
            except DomainError as err:
                unavailable = str(err.reason).lower()
        return pb.ImpactedTenant(
            tenant_id=found.tenant_id,
            subject_ids=sorted(subjects),
            accesses=found.accesses,
            subjects_unavailable_reason=unavailable,
        )

    # -- campaigns -----------------------------------------------------------------------------------------

    async def announce(
        self, request: pb.AnnouncePolicyChangeRequest, context: aio.ServicerContext
    ) -> pb.AnnouncePolicyChangeResponse:
        """Email every active tenant's contacts about a policy version effective 30 days or more from now."""
        who = self._operator(context)
        key = _idempotency_key(request.idempotency_key)
        if not _POLICY_VERSION.fullmatch(request.policy_version):
            raise InvalidArgument(
                "policy_version is 1-64 letters, digits or . _ - (e.g. 2026-12)", metadata={"field": "policy_version"}
            )
        if not request.HasField("effective_at"):
            raise InvalidArgument("effective_at is required", metadata={"field": "effective_at"})
        effective_at = from_timestamp(request.effective_at, "effective_at")

        def work(session: Any) -> campaigns.CampaignView:
            row, _planned, _replayed = campaigns.announce(
                session,
                self.ctx,
                self.desk.settings,
                policy_version=request.policy_version,
                effective_at=effective_at,
                idempotency_key=key,
                announced_by=who.principal,
            )
            return campaigns.view(session, row)

        view = await self.db.run(work, timeout_s=context.time_remaining())
        self._wake()
        return pb.AnnouncePolicyChangeResponse(campaign=_campaign(view))

    async def list_campaigns(
        self, request: pb.ListCampaignsRequest, context: aio.ServicerContext
    ) -> pb.ListCampaignsResponse:
        """A page of campaigns with delivered / failed / pending per tenant."""
        self._operator(context)
        size, after = _page(request.page_size, request.page_token)
        views = await self.db.run(
            lambda s: campaigns.list_campaigns(s, page_size=size, after=after), timeout_s=context.time_remaining()
        )
        return pb.ListCampaignsResponse(
            campaigns=[_campaign(v) for v in views],
            next_page_token=views[-1].row.campaign_id if len(views) == size else "",
        )
