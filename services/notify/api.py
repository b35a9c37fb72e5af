"""gRPC servicer of notify: protobuf <-> domain objects, nothing else (rules live in contacts.py, consent.py,
deliveries.py and templates.py; each call is one transaction on a worker thread).

Breach incidents, their impact and policy-change campaigns are served by :mod:`services.notify.breach_api`
(attached to this servicer). Preferences are stored here and applied at send time by
:mod:`services.notify.pacing` (quiet hours, channels per notice kind, language).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from steward.notify.v1 import notify_pb2 as pb
from steward.notify.v1 import notify_pb2_grpc

from services.chassis.db import Database
from services.chassis.errors import InvalidArgument, Reason, Unimplemented
from services.chassis.identity import CallerIdentity, require_identity
from services.chassis.ids import is_id, is_reference, valid_id
from services.chassis.timestamps import from_timestamp, to_timestamp
from services.notify import breach_api, consent, contacts, deliveries
from services.notify.channels import Lane
from services.notify.consent import Recipient
from services.notify.contacts import ContactView
from services.notify.deliveries import DeliveryContext, DeliveryEngine, Plan
from services.notify.models import ConsentRow, DeliveryRow, PreferencesRow
from services.notify.pacing import NOTICE_KINDS, Preferences
from services.notify.templates import CONTACT_TEMPLATES, MARKETING_TEMPLATES, check_variables

__all__ = ["NotifyServicer"]

T = TypeVar("T")
DEFAULT_PAGE = 100
MAX_PAGE = 500
_CHANNELS: dict[int, str] = {pb.CHANNEL_EMAIL: "email", pb.CHANNEL_WHATSAPP: "whatsapp"}
_CHANNEL_ENUM: dict[str, Any] = {v: k for k, v in _CHANNELS.items()}
_LANES = {pb.LANE_CRITICAL: Lane.CRITICAL, pb.LANE_SERVICE: Lane.SERVICE, pb.LANE_MARKETING: Lane.MARKETING}
_LANE_ENUM = {v.value: k for k, v in _LANES.items()}


def _utc(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _stamp(value: datetime | None) -> Timestamp | None:
    return to_timestamp(_utc(value)) if value is not None else None


def _channel(value: int, field: str = "channel", *, required: bool = True) -> str:
    if value == pb.CHANNEL_UNSPECIFIED and not required:
        return ""
    if value not in _CHANNELS:
        raise InvalidArgument(f"{field} must be CHANNEL_EMAIL or CHANNEL_WHATSAPP", metadata={"field": field})
    return _CHANNELS[value]


def _page_size(value: int) -> int:
    if value < 0 or value > MAX_PAGE:
        raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE} (0 = {DEFAULT_PAGE})")
    return value or DEFAULT_PAGE


def _delivery(row: DeliveryRow) -> pb.Delivery:
    return pb.Delivery(
        delivery_id=row.delivery_id,
        tenant_id=row.tenant_id,
        channel=_CHANNEL_ENUM.get(row.channel, pb.CHANNEL_UNSPECIFIED),
        lane=_LANE_ENUM.get(row.lane, pb.LANE_UNSPECIFIED),
        template=row.template,
        template_version=row.template_version,
        status=pb.DeliveryStatus.Value(f"DELIVERY_STATUS_{row.status}"),
        reason_code=row.reason_code,
        recipient_kind=row.recipient_kind,
        recipient_id=row.recipient_id,
        recipient_hash=row.recipient_hash,
        attempts=row.attempts,
        reference=row.reference,
        provider_ref=row.provider_ref,
        cause=row.cause,
        purpose=row.purpose,
        created_at=_stamp(row.created_at),
        updated_at=_stamp(row.updated_at),
        next_attempt_at=_stamp(row.next_attempt_at),
    )


def _consent(row: ConsentRow) -> pb.ConsentRecord:
    return pb.ConsentRecord(
        consent_id=row.consent_id,
        subject_id=row.recipient_id if row.recipient_kind == "subject" else "",
        contact_id=row.recipient_id if row.recipient_kind == "contact" else "",
        channel=_CHANNEL_ENUM.get(row.channel, pb.CHANNEL_UNSPECIFIED),
        purpose=row.purpose,
        source=row.source,
        wording_version=row.wording_version,
        given_at=_stamp(row.given_at),
        withdrawn_at=_stamp(row.withdrawn_at),
        withdrawal_source=row.withdrawal_source,
    )


def _contact(view: ContactView) -> pb.Contact:
    return pb.Contact(
        contact_id=view.contact_id,
        role=pb.ContactRole.Value(f"CONTACT_ROLE_{view.role}"),
        email=view.email,
        phone=view.phone,
        locale=view.locale,
    )


def _contact_view(message: pb.Contact) -> ContactView:
    known = message.role in pb.ContactRole.values() and message.role != pb.CONTACT_ROLE_UNSPECIFIED
    role = pb.ContactRole.Name(message.role) if known else ""
    return ContactView(
        message.contact_id, role.removeprefix("CONTACT_ROLE_"), message.email, message.phone, message.locale or "en"
    )


class NotifyServicer(notify_pb2_grpc.NotifyServiceServicer):
    """NotifyService over the domain modules."""

    def __init__(self, db: Database, ctx: DeliveryContext, engine: DeliveryEngine | None) -> None:
        self.db = db
        self.ctx = ctx
        self.engine = engine

    async def _run(
        self,
        context: aio.ServicerContext,
        work: Callable[[Session, CallerIdentity], T],
        *,
        tenant_required: bool = True,
    ) -> T:
        identity = require_identity(context, tenant_required=tenant_required)
        return await self.db.run(lambda session: work(session, identity), timeout_s=context.time_remaining())

    # -- contacts ------------------------------------------------------------------------------------------

    async def SetContacts(self, request: pb.SetContactsRequest, context: aio.ServicerContext) -> pb.SetContactsResponse:
        wanted = [_contact_view(c) for c in request.contacts]
        contacts.check(wanted)
        kept = await self._run(
            context, lambda s, who: contacts.set_contacts(s, self.ctx.keys, self.ctx.clock, who.tenant_id, wanted)
        )
        return pb.SetContactsResponse(contacts=[_contact(c) for c in kept])

    async def GetContacts(self, request: pb.GetContactsRequest, context: aio.ServicerContext) -> pb.GetContactsResponse:
        found = await self._run(context, lambda s, who: contacts.get_contacts(s, self.ctx.keys, who.tenant_id))
        return pb.GetContactsResponse(contacts=[_contact(c) for c in found])

    # -- sending -------------------------------------------------------------------------------------------

    def _send_plan(self, request: pb.SendToSubjectRequest, who: CallerIdentity) -> Plan:
        if not is_id(request.subject_id):
            raise InvalidArgument(
                "subject_id must be the vault's id of the subject",
                reason=Reason.MALFORMED_ID if request.subject_id else Reason.IDENTIFIER_REQUIRED,
                metadata={"field": "subject_id"},
            )
        if not request.idempotency_key:
            raise InvalidArgument(
                "idempotency_key is required: the same key never sends twice", reason=Reason.IDEMPOTENCY_KEY_REQUIRED
            )
        if not is_reference(request.idempotency_key):
            raise InvalidArgument(
                "idempotency_key must be 1-128 letters, digits or . _ : -",
                reason=Reason.MALFORMED_ID,
                metadata={"field": "idempotency_key"},
            )
        channel = _channel(request.channel)
        if request.lane not in (pb.LANE_SERVICE, pb.LANE_MARKETING):
            raise InvalidArgument(
                "lane must be LANE_SERVICE (transactional) or LANE_MARKETING", metadata={"field": "lane"}
            )
        lane = _LANES[request.lane]
        if request.template in CONTACT_TEMPLATES:
            raise InvalidArgument("this template is for tenant contacts only", reason=Reason.UNKNOWN_TEMPLATE)
        if lane == Lane.SERVICE and request.template in MARKETING_TEMPLATES:
            raise InvalidArgument(
                "a promotional template cannot go in the service lane; send it as LANE_MARKETING",
                metadata={"field": "lane"},
            )
        purpose = ""
        if lane == Lane.MARKETING:
            if not request.purpose:
                raise InvalidArgument(
                    "marketing needs the purpose the consent covers (e.g. newsletter)", reason=Reason.PURPOSE_REQUIRED
                )
            purpose = consent.code("purpose", request.purpose)
        variables = dict(request.variables)
        check_variables(variables)
        catalogue = self.ctx.catalogue
        version = catalogue.version(request.template, request.locale or "en")
        if channel == "whatsapp" and not catalogue.has_whatsapp(version):
            raise InvalidArgument(
                "this template has no WhatsApp version; send it by email", metadata={"field": "channel"}
            )
        catalogue.render(request.template, request.locale or "en", variables, version=version)  # missing variables
        key_hash = hashlib.sha256(request.idempotency_key.encode()).hexdigest()[:32]
        return Plan(
            tenant_id=who.tenant_id,
            cause=f"request:{key_hash}",
            channel=channel,
            lane=lane,
            template_version=version,
            recipient=Recipient("subject", request.subject_id),
            variables=variables,
            purpose=purpose,
        )

    async def SendToSubject(
        self, request: pb.SendToSubjectRequest, context: aio.ServicerContext
    ) -> pb.SendToSubjectResponse:
        who = require_identity(context)
        p = self._send_plan(request, who)
        try:
            row, replayed = await self.db.run(lambda s: deliveries.plan(s, self.ctx, p))
        except IntegrityError:
            # The same key planned concurrently: the other call's delivery is the answer.
            row, replayed = await self.db.run(lambda s: deliveries.plan(s, self.ctx, p))
        if not replayed and self.engine is not None:
            self.engine.wake()
        return pb.SendToSubjectResponse(delivery=_delivery(row), replayed=replayed)

    async def GetDelivery(self, request: pb.GetDeliveryRequest, context: aio.ServicerContext) -> pb.GetDeliveryResponse:
        valid_id("delivery_id", request.delivery_id)
        row = await self._run(context, lambda s, who: deliveries.get(s, who.tenant_id, request.delivery_id))
        return pb.GetDeliveryResponse(delivery=_delivery(row))

    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: aio.ServicerContext
    ) -> pb.ListDeliveriesResponse:
        size = _page_size(request.page_size)
        after = valid_id("page_token", request.page_token)
        subject_id = valid_id("subject_id", request.subject_id)
        if request.status not in pb.DeliveryStatus.values():
            raise InvalidArgument("status is not a known DeliveryStatus", metadata={"field": "status"})
        status = (
            ""
            if request.status == pb.DELIVERY_STATUS_UNSPECIFIED
            else pb.DeliveryStatus.Name(request.status).removeprefix("DELIVERY_STATUS_")
        )
        rows = await self._run(
            context,
            lambda s, who: deliveries.list_deliveries(
                s, who.tenant_id, subject_id=subject_id, status=status, page_size=size, after=after
            ),
        )
        return pb.ListDeliveriesResponse(
            deliveries=[_delivery(r) for r in rows],
            next_page_token=rows[-1].delivery_id if len(rows) == size else "",
        )

    # -- consent -------------------------------------------------------------------------------------------

    async def RecordConsent(
        self, request: pb.RecordConsentRequest, context: aio.ServicerContext
    ) -> pb.RecordConsentResponse:
        target = Recipient.of(request.subject_id, request.contact_id)
        channel = _channel(request.channel)
        given_at = from_timestamp(request.given_at, "given_at") if request.HasField("given_at") else None
        row = await self._run(
            context,
            lambda s, who: consent.record(
                s,
                self.ctx.clock,
                who.tenant_id,
                target,
                channel=channel,
                purpose=request.purpose,
                source=request.source,
                wording_version=request.wording_version,
                given_at=given_at,
            ),
        )
        return pb.RecordConsentResponse(consent=_consent(row))

    async def WithdrawConsent(
        self, request: pb.WithdrawConsentRequest, context: aio.ServicerContext
    ) -> pb.WithdrawConsentResponse:
        target = Recipient.of(request.subject_id, request.contact_id)
        channel = _channel(request.channel, required=False)
        consent.code("source", request.source)
        rows = await self._run(
            context,
            lambda s, who: consent.withdraw(
                s,
                self.ctx.clock,
                who.tenant_id,
                target,
                channel=channel,
                purpose=request.purpose,
                source=request.source,
            ),
        )
        return pb.WithdrawConsentResponse(withdrawn=[_consent(r) for r in rows])

    async def GetConsent(self, request: pb.GetConsentRequest, context: aio.ServicerContext) -> pb.GetConsentResponse:
        if request.delivery_id:
            valid_id("delivery_id", request.delivery_id)

        def work(s: Session, who: CallerIdentity) -> pb.GetConsentResponse:
            row = deliveries.get(s, who.tenant_id, request.delivery_id) if request.delivery_id else None
            if row is not None and not (request.subject_id or request.contact_id):
                target = Recipient(row.recipient_kind, row.recipient_id)
            else:
                target = Recipient.of(request.subject_id, request.contact_id)
            answer = pb.GetConsentResponse(
                history=[_consent(c) for c in consent.history(s, who.tenant_id, target)],
                suppressions=[
                    pb.Suppression(
                        channel=_CHANNEL_ENUM.get(x.channel, pb.CHANNEL_UNSPECIFIED),
                        reason_code=x.reason_code,
                        at=_stamp(x.at),
                    )
                    for x in consent.suppressions(s, who.tenant_id, target)
                ],
            )
            if row is not None:
                answer.delivery.CopyFrom(_delivery(row))
                answer.decided_by_consent_id = row.consent_id
            return answer

        return await self._run(context, work)

    # -- preferences ---------------------------------------------------------------------------------------

    async def SetPreferences(
        self, request: pb.SetPreferencesRequest, context: aio.ServicerContext
    ) -> pb.SetPreferencesResponse:
        prefs = request.preferences
        _check_preferences(prefs)
        stored = json.dumps(
            {
                "time_zone": prefs.time_zone,
                "language": prefs.language,
                "quiet": [prefs.quiet_hours.start_minute, prefs.quiet_hours.end_minute],
                "channels": {c.notice_kind: [_CHANNELS[x] for x in c.channels] for c in prefs.channels},
            },
            sort_keys=True,
        )

        def work(s: Session, who: CallerIdentity) -> None:
            row = s.get(PreferencesRow, who.tenant_id)
            if row is None:
                s.add(PreferencesRow(tenant_id=who.tenant_id, preferences_json=stored, updated_at=self.ctx.clock.now()))
            else:
                row.preferences_json, row.updated_at = stored, self.ctx.clock.now()

        await self._run(context, work)
        return pb.SetPreferencesResponse(preferences=prefs)

    async def GetPreferences(
        self, request: pb.GetPreferencesRequest, context: aio.ServicerContext
    ) -> pb.GetPreferencesResponse:
        row = await self._run(context, lambda s, who: s.get(PreferencesRow, who.tenant_id))
        if row is None:
            return pb.GetPreferencesResponse(preferences=pb.Preferences(time_zone="UTC", language="en"))
        stored = Preferences.from_json(row.preferences_json)  # the same reading the delivery engine applies
        return pb.GetPreferencesResponse(
            preferences=pb.Preferences(
                time_zone=stored.time_zone,
                language=stored.language,
                quiet_hours=pb.QuietHours(start_minute=stored.quiet_start, end_minute=stored.quiet_end),
                channels=[
                    pb.NoticeChannels(notice_kind=kind, channels=[_CHANNEL_ENUM[c] for c in chans])
                    for kind, chans in sorted(stored.channels.items())
                ],
            )
        )

    # -- not built yet -------------------------------------------------------------------------------------

    def _unimplemented(self, context: aio.ServicerContext, what: str) -> None:
        require_identity(context, tenant_required=False)
        raise Unimplemented(f"{what} is not built yet; nothing was recorded or sent")

    async def DeclareBreach(self, request: Any, context: aio.ServicerContext) -> Any:
        return await breach_api.of(self).declare(request, context)

    async def UpdateBreach(self, request: Any, context: aio.ServicerContext) -> Any:
        return await breach_api.of(self).update(request, context)

    async def GetBreach(self, request: Any, context: aio.ServicerContext) -> Any:
        return await breach_api.of(self).get(request, context)

    async def ListBreaches(self, request: Any, context: aio.ServicerContext) -> Any:
        return await breach_api.of(self).list(request, context)

    async def BreachImpact(self, request: Any, context: aio.ServicerContext) -> Any:
        return await breach_api.of(self).impact(request, context)

    async def AnnouncePolicyChange(self, request: Any, context: aio.ServicerContext) -> Any:
        return await breach_api.of(self).announce(request, context)

    async def ListCampaigns(self, request: Any, context: aio.ServicerContext) -> Any:
        return await breach_api.of(self).list_campaigns(request, context)

    async def AcknowledgeBreach(self, request: Any, context: aio.ServicerContext) -> Any:
        return await breach_api.of(self).acknowledge(request, context)


def _check_preferences(prefs: pb.Preferences) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        if not prefs.time_zone or ("/" not in prefs.time_zone and prefs.time_zone != "UTC"):
            raise ZoneInfoNotFoundError
        ZoneInfo(prefs.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(
            "time_zone must be an IANA zone such as Asia/Kolkata", metadata={"field": "time_zone"}
        ) from None
    if prefs.language not in ("en", "hi"):
        raise InvalidArgument("language must be en or hi", reason=Reason.UNKNOWN_LOCALE)
    for value, field in (
        (prefs.quiet_hours.start_minute, "start_minute"),
        (prefs.quiet_hours.end_minute, "end_minute"),
    ):
        if not 0 <= value < 24 * 60:
            raise InvalidArgument(
                f"quiet_hours.{field} must be minutes after midnight (0-1439)", metadata={"field": field}
            )
    for entry in prefs.channels:
        if entry.notice_kind not in NOTICE_KINDS:
            raise InvalidArgument(
                "notice_kind must be dsr, policy, product_updates or support_access",
                metadata={"field": "notice_kind"},
            )
        for channel in entry.channels:
            _channel(channel, "channels")
