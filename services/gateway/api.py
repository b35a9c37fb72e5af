"""GatewayAdminService servicer: proto <-> domain, tenant targeting, nothing else.

The caller was admitted by :mod:`services.gateway.admission`; here each method decides *which*
tenant it acts on — an API key always its own (naming another tenant gets the same NOT_FOUND as a
tenant that does not exist), operators the one they name — and calls the domain modules in one
transaction each.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf.message import Message
from grpc import aio
from sqlalchemy.orm import Session
from steward.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.db import Database
from services.chassis.errors import InvalidArgument, NotFound, PermissionDenied, Reason
from services.chassis.identity import CallerIdentity, identity_metadata
from services.chassis.ids import valid_id
from services.chassis.timestamps import to_timestamp
from services.gateway import account, apikeys, grants, tenants
from services.gateway.caller import Caller, current_caller
from services.gateway.forwarding import DeadlinePolicy, Upstreams, upstream_error
from services.gateway.models import ApiKeyRow, SupportAccessRow, SupportGrantRow, TenantRow
from services.gateway.policy import OPS_ADMIN, OPS_ONCALL, SUPPORT

__all__ = ["GatewayAdminServicer"]

_KEY_STATES = {
    "active": gateway_pb2.API_KEY_STATE_ACTIVE,
    "revoked": gateway_pb2.API_KEY_STATE_REVOKED,
    "expired": gateway_pb2.API_KEY_STATE_EXPIRED,
}
_GRANT_STATES = {
    "pending": gateway_pb2.SUPPORT_GRANT_STATE_PENDING,
    "active": gateway_pb2.SUPPORT_GRANT_STATE_ACTIVE,
    "expired": gateway_pb2.SUPPORT_GRANT_STATE_EXPIRED,
    "revoked": gateway_pb2.SUPPORT_GRANT_STATE_REVOKED,
}
_VAULT_ADMIN = "/steward.vault.v1.VaultAdminService/"


def _details_from_proto(message: gateway_pb2.TenantDetails) -> tenants.TenantDetails:
    prefs = message.communication_preferences
    return tenants.TenantDetails(
        company_name=message.company_name,
        representatives=tuple(
            tenants.Representative(name=r.name, email=r.email, whatsapp_number=r.whatsapp_number, role=r.role)
            for r in message.representatives
        ),
        preferred_channel=int(prefs.preferred_channel),
        language=prefs.language,
        product_updates=prefs.product_updates,
        industry=message.industry,
        size=int(message.size),
    )


def _key_to_proto(row: ApiKeyRow, now: datetime) -> gateway_pb2.ApiKey:
    return gateway_pb2.ApiKey(
        key_id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        scopes=row.scopes.split(),
        env=row.env,
        state=_KEY_STATES[apikeys.key_state(row, now)],
        created_at=to_timestamp(row.created_at),
        expires_at=to_timestamp(row.expires_at),
        revoked_at=to_timestamp(row.revoked_at),
        created_by=row.created_by,
        rotated_from=row.rotated_from,
    )


def _grant_to_proto(row: SupportGrantRow, now: datetime) -> gateway_pb2.SupportGrant:
    return gateway_pb2.SupportGrant(
        grant_id=row.id,
        tenant_id=row.tenant_id,
        principal=row.principal,
        reason=row.reason,
        ticket_id=row.ticket_id,
        duration_seconds=row.duration_s,
        state=_GRANT_STATES[grants.grant_state(row, now)],
        emergency=row.emergency,
        requested_at=to_timestamp(row.requested_at),
        approved_at=to_timestamp(row.approved_at),
        approved_by=row.approved_by,
        expires_at=to_timestamp(row.expires_at),
        revoked_at=to_timestamp(row.revoked_at),
        revoked_by=row.revoked_by,
        legal_request_id=row.legal_request_id,
    )


def _access_to_proto(row: SupportAccessRow) -> gateway_pb2.SupportAccess:
    return gateway_pb2.SupportAccess(
        seq=row.seq,
        grant_id=row.grant_id,
        principal=row.principal,
        method=row.method,
        status=row.status,
        at=to_timestamp(row.at),
        latency_ms=row.latency_ms,
    )


def _tenant_for(caller: Caller, requested: str) -> str:
    """An API key acts on its own tenant only; operators must name one."""
    valid_id("tenant_id", requested)
    if caller.kind == "api_key":
        if requested and requested != caller.tenant_id:
            raise NotFound("no such tenant: check tenant_id", reason=Reason.TENANT_NOT_FOUND)
        return caller.tenant_id
    if not requested:
        raise InvalidArgument("tenant_id is required: operators must name the tenant")
    return requested


def _is_ops(caller: Caller) -> bool:
    return caller.has_role(OPS_ADMIN, OPS_ONCALL)


class GatewayAdminServicer(gateway_pb2_grpc.GatewayAdminServiceServicer):
    """Tenants, API keys, support grants and WhoAmI."""

    def __init__(
        self,
        *,
        db: Database,
        sealer: tenants.RegistrySealer,
        pepper: bytes,
        env: str,
        upstreams: Upstreams,
        deadlines: DeadlinePolicy,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.db = db
        self.sealer = sealer
        self.pepper = pepper
        self.env = env
        self.upstreams = upstreams
        self.deadlines = deadlines
        self.clock = clock

    # ----------------------------------------------------------------- tenants

    def _tenant_to_proto(self, row: TenantRow) -> gateway_pb2.Tenant:
        reps = self.sealer.open(row.id, row.representatives_sealed)
        details = gateway_pb2.TenantDetails(
            company_name=row.company_name,
            representatives=[
                gateway_pb2.Representative(name=r.name, email=r.email, whatsapp_number=r.whatsapp_number, role=r.role)
                for r in reps
            ],
            communication_preferences=gateway_pb2.CommunicationPreferences(
                preferred_channel=row.preferred_channel,  # type: ignore[arg-type]
                language=row.language,
                product_updates=row.product_updates,
            ),
            industry=row.industry,
            size=row.size,  # type: ignore[arg-type]
        )
        return gateway_pb2.Tenant(
            tenant_id=row.id,
            details=details,
            state=gateway_pb2.TENANT_STATE_CLOSED if row.state == "closed" else gateway_pb2.TENANT_STATE_ACTIVE,
            version=row.version,
            created_at=to_timestamp(row.created_at),
            updated_at=to_timestamp(row.updated_at),
            closed_at=to_timestamp(row.closed_at),
            grace_period_days=row.grace_period_days,
            shred_after=to_timestamp(tenants.shred_after(row)),
            closed_by=row.closed_by,
            reopened_at=to_timestamp(row.reopened_at),
            reopened_by=row.reopened_by,
        )

    async def _vault_admin(self, rpc: str, tenant_id: str, caller: Caller, request: Message) -> Message:
        """Call a VaultAdminService method as the gateway, for ``tenant_id``."""
        stub = vault_pb2_grpc.VaultAdminServiceStub(self.upstreams.channel("vault"))  # type: ignore[no-untyped-call]
        identity = CallerIdentity(
            tenant_id=tenant_id,
            principal=caller.principal,
            principal_kind=caller.kind,
            credential_id=caller.credential_id,
        )
        timeout = self.deadlines.cap_for(_VAULT_ADMIN + rpc)
        try:
            return await getattr(stub, rpc)(request, metadata=identity_metadata(identity), timeout=timeout)
        except aio.AioRpcError as err:
            # The vault's own refusal (e.g. a shredded tenant) reaches the caller as the vault sent it; only
            # an unreachable or slow vault becomes the gateway's UNAVAILABLE / DEADLINE_EXCEEDED.
            raise upstream_error(err, upstream="vault", cap=timeout) from None

    async def CreateTenant(
        self, request: gateway_pb2.CreateTenantRequest, context: aio.ServicerContext
    ) -> gateway_pb2.CreateTenantResponse:
        caller = current_caller()
        details = tenants.validate_details(_details_from_proto(request.details))
        tenant_id = tenants.new_tenant_id()
        # The vault first: the registry entry (and its TenantCreated event) exists only once the vault does.
        await self._vault_admin("CreateTenant", tenant_id, caller, vault_pb2.CreateTenantRequest())
        row = await self.db.run(
            lambda s: tenants.create_tenant(
                s, tenant_id=tenant_id, details=details, sealer=self.sealer, now=self.clock.now()
            )
        )
        return gateway_pb2.CreateTenantResponse(tenant=self._tenant_to_proto(row))

    async def _support_may_see(self, caller: Caller, tenant_id: str) -> None:
        if caller.kind == "operator" and not _is_ops(caller) and caller.has_role(SUPPORT):
            now = self.clock.now()
            live = await self.db.run(
                lambda s: grants.list_grants(
                    s, tenant_id=tenant_id, principal=caller.principal, include_inactive=False, now=now
                )
            )
            if not any(grants.grant_state(g, now) == "active" for g in live):
                raise NotFound("no such tenant: check tenant_id", reason=Reason.TENANT_NOT_FOUND)

    async def GetTenant(
        self, request: gateway_pb2.GetTenantRequest, context: aio.ServicerContext
    ) -> gateway_pb2.GetTenantResponse:
        caller = current_caller()
        tenant_id = _tenant_for(caller, request.tenant_id)
        await self._support_may_see(caller, tenant_id)
        row = await self.db.run(lambda s: tenants.get_tenant(s, tenant_id))
        return gateway_pb2.GetTenantResponse(tenant=self._tenant_to_proto(row))

    async def UpdateTenant(
        self, request: gateway_pb2.UpdateTenantRequest, context: aio.ServicerContext
    ) -> gateway_pb2.UpdateTenantResponse:
        caller = current_caller()
        tenant_id = _tenant_for(caller, request.tenant_id)
        details = tenants.validate_details(_details_from_proto(request.details))
        row = await self.db.run(
            lambda s: tenants.update_tenant(
                s,
                tenant_id=tenant_id,
                details=details,
                expected_version=request.expected_version,
                sealer=self.sealer,
                now=self.clock.now(),
                grace_period_days=request.grace_period_days,
            )
        )
        return gateway_pb2.UpdateTenantResponse(tenant=self._tenant_to_proto(row))

    async def CloseTenant(
        self, request: gateway_pb2.CloseTenantRequest, context: aio.ServicerContext
    ) -> gateway_pb2.CloseTenantResponse:
        caller = current_caller()
        row = await self._close(caller, _tenant_for(caller, request.tenant_id))
        return gateway_pb2.CloseTenantResponse(tenant=self._tenant_to_proto(row))

    async def _close(self, caller: Caller, tenant_id: str) -> TenantRow:
        row, _changed = await self.db.run(
            lambda s: tenants.close_tenant(s, tenant_id, now=self.clock.now(), by=caller.principal)
        )
        # Closing again re-sends the vault call, so a failed first attempt is fixed by retrying.
        await self._vault_admin("CloseTenant", tenant_id, caller, vault_pb2.CloseTenantRequest())
        return row

    # ---------------------------------------------------------------- API keys

    async def CreateApiKey(
        self, request: gateway_pb2.CreateApiKeyRequest, context: aio.ServicerContext
    ) -> gateway_pb2.CreateApiKeyResponse:
        caller = current_caller()
        tenant_id = _tenant_for(caller, request.tenant_id)
        wanted = set(request.scopes)
        if caller.kind == "api_key" and not wanted <= caller.scopes:
            raise PermissionDenied("an API key can only grant scopes it holds itself; ask ops:admin for more")
        row, token = await self.db.run(
            lambda s: apikeys.create_key(
                s,
                tenant_id=tenant_id,
                name=request.name,
                scopes=request.scopes,
                ttl_s=request.ttl_seconds,
                env=self.env,
                created_by=caller.principal,
                pepper=self.pepper,
                now=self.clock.now(),
            )
        )
        return gateway_pb2.CreateApiKeyResponse(api_key=_key_to_proto(row, self.clock.now()), token=token)

    async def ListApiKeys(
        self, request: gateway_pb2.ListApiKeysRequest, context: aio.ServicerContext
    ) -> gateway_pb2.ListApiKeysResponse:
        caller = current_caller()
        tenant_id = _tenant_for(caller, request.tenant_id)
        now = self.clock.now()
        rows = await self.db.run(
            lambda s: apikeys.list_keys(s, tenant_id, include_inactive=request.include_inactive, now=now)
        )
        return gateway_pb2.ListApiKeysResponse(api_keys=[_key_to_proto(r, now) for r in rows])

    def _key_scope(self, caller: Caller) -> str | None:
        return caller.tenant_id if caller.kind == "api_key" else None

    async def RotateApiKey(
        self, request: gateway_pb2.RotateApiKeyRequest, context: aio.ServicerContext
    ) -> gateway_pb2.RotateApiKeyResponse:
        caller = current_caller()

        valid_id("key_id", request.key_id)

        def rotate(session: Session) -> tuple[ApiKeyRow, str, ApiKeyRow]:
            row = apikeys.find_key(session, request.key_id, tenant_id=self._key_scope(caller))
            return apikeys.rotate_key(
                session,
                row,
                grace_s=request.grace_seconds,
                by=caller.principal,
                env=self.env,
                pepper=self.pepper,
                now=now,
            )

        now = self.clock.now()
        new_row, token, old_row = await self.db.run(rotate)
        return gateway_pb2.RotateApiKeyResponse(
            api_key=_key_to_proto(new_row, now), token=token, previous=_key_to_proto(old_row, now)
        )

    async def RevokeApiKey(
        self, request: gateway_pb2.RevokeApiKeyRequest, context: aio.ServicerContext
    ) -> gateway_pb2.RevokeApiKeyResponse:
        caller = current_caller()

        valid_id("key_id", request.key_id)

        def revoke(session: Session) -> ApiKeyRow:
            row = apikeys.find_key(session, request.key_id, tenant_id=self._key_scope(caller))
            return apikeys.revoke_key(session, row, by=caller.principal, now=now)

        now = self.clock.now()
        row = await self.db.run(revoke)
        return gateway_pb2.RevokeApiKeyResponse(api_key=_key_to_proto(row, now))

    # ---------------------------------------------------------- support access

    async def RequestSupportAccess(
        self, request: gateway_pb2.RequestSupportAccessRequest, context: aio.ServicerContext
    ) -> gateway_pb2.RequestSupportAccessResponse:
        caller = current_caller()
        valid_id("tenant_id", request.tenant_id)
        now = self.clock.now()
        row = await self.db.run(
            lambda s: grants.request_access(
                s,
                tenant_id=request.tenant_id,
                principal=caller.principal,
                reason=request.reason,
                ticket_id=request.ticket_id,
                duration_s=request.duration_seconds,
                now=now,
            )
        )
        return gateway_pb2.RequestSupportAccessResponse(grant=_grant_to_proto(row, now))

    async def ApproveSupportAccess(
        self, request: gateway_pb2.ApproveSupportAccessRequest, context: aio.ServicerContext
    ) -> gateway_pb2.ApproveSupportAccessResponse:
        caller = current_caller()

        valid_id("grant_id", request.grant_id)

        def approve(session: Session) -> SupportGrantRow:
            row = grants.find_grant(session, request.grant_id, tenant_id=caller.tenant_id)
            return grants.approve(session, row, approved_by=caller.principal, now=now)

        now = self.clock.now()
        row = await self.db.run(approve)
        return gateway_pb2.ApproveSupportAccessResponse(grant=_grant_to_proto(row, now))

    async def GrantEmergencySupportAccess(
        self, request: gateway_pb2.GrantEmergencySupportAccessRequest, context: aio.ServicerContext
    ) -> gateway_pb2.GrantEmergencySupportAccessResponse:
        caller = current_caller()
        valid_id("tenant_id", request.tenant_id)
        now = self.clock.now()
        row = await self.db.run(
            lambda s: grants.grant_emergency(
                s,
                tenant_id=request.tenant_id,
                principal=request.principal,
                reason=request.reason,
                ticket_id=request.ticket_id,
                duration_s=request.duration_seconds,
                granted_by=caller.principal,
                now=now,
            )
        )
        return gateway_pb2.GrantEmergencySupportAccessResponse(grant=_grant_to_proto(row, now))

    def _grant_visibility(self, caller: Caller) -> tuple[str | None, str | None]:
        """(tenant filter, principal filter) for the grants this caller may see or act on."""
        if caller.kind == "api_key":
            return caller.tenant_id, None
        if _is_ops(caller):
            return None, None
        return None, caller.principal  # support engineers: their own grants only

    async def RevokeSupportAccess(
        self, request: gateway_pb2.RevokeSupportAccessRequest, context: aio.ServicerContext
    ) -> gateway_pb2.RevokeSupportAccessResponse:
        caller = current_caller()
        tenant_filter, principal_filter = self._grant_visibility(caller)

        valid_id("grant_id", request.grant_id)

        def revoke(session: Session) -> SupportGrantRow:
            row = grants.find_grant(session, request.grant_id, tenant_id=tenant_filter, principal=principal_filter)
            return grants.revoke(session, row, by=caller.principal, now=now)

        now = self.clock.now()
        row = await self.db.run(revoke)
        return gateway_pb2.RevokeSupportAccessResponse(grant=_grant_to_proto(row, now))

    async def ListSupportGrants(
        self, request: gateway_pb2.ListSupportGrantsRequest, context: aio.ServicerContext
    ) -> gateway_pb2.ListSupportGrantsResponse:
        caller = current_caller()
        tenant_filter, principal_filter = self._grant_visibility(caller)
        valid_id("tenant_id", request.tenant_id)
        if caller.kind == "api_key":
            tenant_filter = _tenant_for(caller, request.tenant_id)
        elif request.tenant_id:
            tenant_filter = request.tenant_id
        now = self.clock.now()
        rows = await self.db.run(
            lambda s: grants.list_grants(
                s,
                tenant_id=tenant_filter,
                principal=principal_filter,
                include_inactive=request.include_inactive,
                now=now,
                tenant_view=caller.kind == "api_key",
            )
        )
        return gateway_pb2.ListSupportGrantsResponse(grants=[_grant_to_proto(r, now) for r in rows])

    async def ListSupportAccesses(
        self, request: gateway_pb2.ListSupportAccessesRequest, context: aio.ServicerContext
    ) -> gateway_pb2.ListSupportAccessesResponse:
        caller = current_caller()
        tenant_filter, principal_filter = self._grant_visibility(caller)
        valid_id("grant_id", request.grant_id)
        valid_id("page_token", request.page_token)
        page_size = request.page_size or 100
        if not 1 <= page_size <= 500:
            raise InvalidArgument("page_size must be between 1 and 500")
        try:
            after = int(request.page_token) if request.page_token else 0
        except ValueError:
            raise InvalidArgument("page_token: pass back next_page_token from the previous response") from None

        def read(session: Session) -> list[SupportAccessRow]:
            grants.find_grant(session, request.grant_id, tenant_id=tenant_filter, principal=principal_filter)
            return grants.list_accesses(session, request.grant_id, after_seq=after, limit=page_size)

        rows = await self.db.run(read)
        next_token = str(rows[-1].seq) if len(rows) == page_size else ""
        return gateway_pb2.ListSupportAccessesResponse(
            accesses=[_access_to_proto(r) for r in rows], next_page_token=next_token
        )

    # ------------------------------------------------------------------ whoami

    async def WhoAmI(
        self, request: gateway_pb2.WhoAmIRequest, context: aio.ServicerContext
    ) -> gateway_pb2.WhoAmIResponse:
        caller = current_caller()
        return gateway_pb2.WhoAmIResponse(
            principal=caller.principal,
            principal_kind=caller.kind,
            tenant_id=caller.tenant_id,
            credential_id=caller.credential_id,
            scopes=sorted(caller.scopes),
            roles=sorted(caller.roles),
            support_grant_id=caller.support_grant_id,
            credential_expires_at=to_timestamp(caller.expires_at),
        )

    # ------------------------------------------------------ account data rights

    async def ExportAccount(
        self, request: gateway_pb2.ExportAccountRequest, context: aio.ServicerContext
    ) -> gateway_pb2.ExportAccountResponse:
        caller = current_caller()
        tenant_id = _tenant_for(caller, request.tenant_id)
        now = self.clock.now()
        document = await self.db.run(lambda s: account.account_document(s, tenant_id, sealer=self.sealer, now=now))
        return gateway_pb2.ExportAccountResponse(schema=account.ACCOUNT_SCHEMA, document=document)

    async def RequestAccountDeletion(
        self, request: gateway_pb2.RequestAccountDeletionRequest, context: aio.ServicerContext
    ) -> gateway_pb2.RequestAccountDeletionResponse:
        caller = current_caller()
        row = await self._close(caller, _tenant_for(caller, request.tenant_id))
        return gateway_pb2.RequestAccountDeletionResponse(tenant=self._tenant_to_proto(row))

    async def ReopenTenant(
        self, request: gateway_pb2.ReopenTenantRequest, context: aio.ServicerContext
    ) -> gateway_pb2.ReopenTenantResponse:
        caller = current_caller()
        tenant_id = _tenant_for(caller, request.tenant_id)
        now = self.clock.now()
        # The grace period is checked first (nothing changes past it); the vault then refuses a shredded tenant
        # (TENANT_SHREDDED, passed through) before the registry reopens, so the two never disagree for long.
        await self.db.run(lambda s: tenants.check_reopenable(s, tenant_id, now=now))
        await self._vault_admin("ReopenTenant", tenant_id, caller, vault_pb2.ReopenTenantRequest())
        row, _changed = await self.db.run(lambda s: tenants.reopen_tenant(s, tenant_id, now=now, by=caller.principal))
        return gateway_pb2.ReopenTenantResponse(tenant=self._tenant_to_proto(row))
