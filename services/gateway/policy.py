"""The scope table: who may call each method the gateway serves.

Every method the gateway exposes (its own admin API and every forwarded one) has exactly one
:class:`RoutePolicy`; :func:`check_complete` makes start-up fail when a registered method has none,
so a newly forwarded service cannot be reachable without a decision about who may call it.

Adding a service (dsr, notify) = one registration line in ``forwarding.FORWARDED_SERVICES`` plus its
rows here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "OPERATOR_ROLES",
    "POLICIES",
    "SCOPES",
    "RoutePolicy",
    "check_complete",
    "policy_for",
]

SCOPES = frozenset(
    {
        "records:read",
        "records:write",
        "subjects:export",
        "subjects:erase",
        "dsr:submit",
        "dsr:manage",
        "notify:send",
        "audit:read",
        "keys:manage",
        "support:approve",
    }
)

OPS_ADMIN = "ops:admin"
OPS_ONCALL = "ops:oncall"
SUPPORT = "support"
OPERATOR_ROLES = frozenset({OPS_ADMIN, OPS_ONCALL, SUPPORT})


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """Who may call one method.

    ``scopes``: an API key needs one of these (empty = API keys may not call it).
    ``roles``: an operator needs one of these roles.
    ``support_read``: a ``support`` operator may call it under a live grant for the grant's tenant.
    ``any_caller``: every authenticated caller (WhoAmI).
    ``all_tenants``: operators call it naming no tenant and act across every tenant (ApplyAllTombstones,
    ListOverdue); an API key allowed by ``scopes`` still acts for its own tenant only.
    ``deadline_cap_s``: default downstream deadline cap (settings may override).
    """

    scopes: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    support_read: bool = False
    any_caller: bool = False
    deadline_cap_s: float | None = None
    all_tenants: bool = False


def _p(
    scopes: Iterable[str] = (),
    roles: Iterable[str] = (),
    *,
    support_read: bool = False,
    any_caller: bool = False,
    cap: float | None = None,
    all_tenants: bool = False,
) -> RoutePolicy:
    unknown = set(scopes) - SCOPES
    if unknown:
        raise ValueError(f"unknown scopes in policy: {sorted(unknown)}")
    return RoutePolicy(frozenset(scopes), frozenset(roles), support_read, any_caller, cap, all_tenants)


_VAULT = "/steward.vault.v1.VaultService/"
_VAULT_ADMIN = "/steward.vault.v1.VaultAdminService/"
_GW = "/steward.gateway.v1.GatewayAdminService/"
_DSR = "/steward.dsr.v1.DsrService/"
_LEGAL = "/steward.legal.v1.LegalRequestService/"
_NOTIFY = "/steward.notify.v1.NotifyService/"
_OPS = (OPS_ADMIN, OPS_ONCALL)

POLICIES: dict[str, RoutePolicy] = {
    # --- vault: customer records (tenants' apps; support engineers may read under a grant)
    _VAULT + "PutRecord": _p(["records:write"]),
    _VAULT + "PutRecords": _p(["records:write"]),
    _VAULT + "GetRecord": _p(["records:read"], support_read=True),
    _VAULT + "ListRecords": _p(["records:read"], support_read=True),
    _VAULT + "UpdateRecord": _p(["records:write"]),
    _VAULT + "DeleteRecord": _p(["records:write"]),
    _VAULT + "ResolveSubject": _p(["records:read"], support_read=True),
    _VAULT + "ExportSubject": _p(["subjects:export"], cap=300.0),
    _VAULT + "EraseSubject": _p(["subjects:erase"]),
    _VAULT + "RestrictSubject": _p(["dsr:manage"]),
    _VAULT + "LiftRestriction": _p(["dsr:manage"]),
    _VAULT + "SetLegalHold": _p(["dsr:manage"]),
    _VAULT + "ClearLegalHold": _p(["dsr:manage"]),
    # the whole tenant's plaintext, to the tenant admin only (never operators, never support)
    _VAULT + "ExportTenant": _p(["keys:manage"], cap=3600.0),
    _VAULT + "DownloadExport": _p(["subjects:export", "dsr:manage"], cap=300.0),
    # --- vault admin: lifecycle is the gateway's (GatewayAdminService) or ops:admin's; audit is the tenant's
    _VAULT_ADMIN + "CreateTenant": _p(roles=[OPS_ADMIN]),
    _VAULT_ADMIN + "GetTenant": _p(["audit:read", "keys:manage"], _OPS),
    _VAULT_ADMIN + "GetKeyStatus": _p(["audit:read", "keys:manage"], _OPS),
    _VAULT_ADMIN + "CloseTenant": _p(roles=[OPS_ADMIN]),
    _VAULT_ADMIN + "ShredTenant": _p(roles=[OPS_ADMIN]),
    _VAULT_ADMIN + "RotateTenantKey": _p(["keys:manage"], _OPS),
    _VAULT_ADMIN + "RewrapTenantKeys": _p(["keys:manage"], _OPS, cap=3600.0),
    _VAULT_ADMIN + "ListAuditEvents": _p(["audit:read"], _OPS),
    _VAULT_ADMIN + "VerifyAuditChain": _p(["audit:read"], _OPS, cap=300.0),
    _VAULT_ADMIN + "ApplyTombstones": _p(roles=_OPS, cap=3600.0),
    _VAULT_ADMIN + "GetAuditCheckpoint": _p(["audit:read"], _OPS),
    _VAULT_ADMIN + "ApplyAllTombstones": _p(roles=_OPS, all_tenants=True, cap=3600.0),
    _VAULT_ADMIN + "ReopenTenant": _p(roles=[OPS_ADMIN]),
    # --- dsr: tenants submit (dsr:submit) and handle (dsr:manage) their requests; operators read any tenant's
    _DSR + "SubmitRequest": _p(["dsr:submit", "dsr:manage"]),
    _DSR + "GetRequest": _p(["dsr:submit", "dsr:manage"], _OPS),
    _DSR + "ListRequests": _p(["dsr:manage"], _OPS),
    _DSR + "ApproveRequest": _p(["dsr:manage"]),
    _DSR + "RejectRequest": _p(["dsr:manage"]),
    _DSR + "CancelRequest": _p(["dsr:manage"]),
    _DSR + "ExtendDeadline": _p(["dsr:manage"]),
    _DSR + "GetEvidence": _p(["dsr:manage"], _OPS),
    _DSR + "VerifyEvidence": _p(["dsr:manage"], _OPS),
    _DSR + "GetPolicy": _p(["dsr:manage"], _OPS),
    _DSR + "SetPolicy": _p(["dsr:manage"]),
    _DSR + "ListOverdue": _p(["dsr:manage"], _OPS, all_tenants=True),
    _DSR + "RunRetentionSweep": _p(roles=[OPS_ADMIN], all_tenants=True, cap=3600.0),
    _DSR + "GetShredCertificate": _p(["dsr:manage"], _OPS),
    _DSR + "ListOffboarding": _p(["dsr:manage"], _OPS, all_tenants=True),
    # --- notify: tenants' apps send and record consent (notify:send); the account admin keeps contacts and
    # preferences (keys:manage); operators read deliveries and consent ("why was this sent") and run breaches.
    _NOTIFY + "SetContacts": _p(["keys:manage"]),
    _NOTIFY + "GetContacts": _p(["keys:manage"], _OPS),
    _NOTIFY + "SendToSubject": _p(["notify:send"]),
    _NOTIFY + "GetDelivery": _p(["notify:send"], _OPS),
    _NOTIFY + "ListDeliveries": _p(["notify:send"], _OPS),
    _NOTIFY + "RecordConsent": _p(["notify:send"]),
    _NOTIFY + "WithdrawConsent": _p(["notify:send"]),
    _NOTIFY + "GetConsent": _p(["notify:send"], _OPS),
    _NOTIFY + "SetPreferences": _p(["keys:manage"]),
    _NOTIFY + "GetPreferences": _p(["keys:manage"], _OPS),
    _NOTIFY + "DeclareBreach": _p(roles=[OPS_ADMIN], all_tenants=True),
    _NOTIFY + "UpdateBreach": _p(roles=[OPS_ADMIN], all_tenants=True),
    _NOTIFY + "GetBreach": _p(roles=_OPS, all_tenants=True),
    _NOTIFY + "ListBreaches": _p(roles=_OPS, all_tenants=True),
    _NOTIFY + "BreachImpact": _p(roles=[OPS_ADMIN], all_tenants=True, cap=300.0),
    _NOTIFY + "AnnouncePolicyChange": _p(roles=[OPS_ADMIN], all_tenants=True),
    _NOTIFY + "ListCampaigns": _p(roles=_OPS, all_tenants=True),
    _NOTIFY + "AcknowledgeBreach": _p(["keys:manage"]),  # the signed ack token names breach and tenant
    # --- the gateway's own admin API (tenant targeting is resolved by the servicer)
    _GW + "CreateTenant": _p(roles=[OPS_ADMIN]),
    _GW + "GetTenant": _p(["keys:manage", "audit:read"], (*_OPS, SUPPORT)),
    _GW + "UpdateTenant": _p(["keys:manage"], [OPS_ADMIN]),
    _GW + "CloseTenant": _p(roles=[OPS_ADMIN]),
    _GW + "ListTenants": _p(roles=_OPS),
    _GW + "CreateApiKey": _p(["keys:manage"], [OPS_ADMIN]),
    _GW + "ListApiKeys": _p(["keys:manage"], _OPS),
    _GW + "RotateApiKey": _p(["keys:manage"], [OPS_ADMIN]),
    _GW + "RevokeApiKey": _p(["keys:manage"], _OPS),
    _GW + "RequestSupportAccess": _p(roles=[SUPPORT]),
    _GW + "ApproveSupportAccess": _p(["support:approve"]),
    _GW + "GrantEmergencySupportAccess": _p(roles=[OPS_ADMIN]),
    _GW + "RevokeSupportAccess": _p(["support:approve"], (*_OPS, SUPPORT)),
    _GW + "ListSupportGrants": _p(["support:approve", "audit:read"], (*_OPS, SUPPORT)),
    _GW + "ListSupportAccesses": _p(["support:approve", "audit:read"], (*_OPS, SUPPORT)),
    _GW + "WhoAmI": _p(any_caller=True),
    _GW + "ExportAccount": _p(["keys:manage"], _OPS),
    _GW + "RequestAccountDeletion": _p(["keys:manage"], [OPS_ADMIN]),
    _GW + "ReopenTenant": _p(["keys:manage"], [OPS_ADMIN]),
    # --- legal disclosure requests (steward.legal.v1): operators only, the tenant named in the request or the
    # register entry (so all_tenants); four eyes enforced by the servicer
    _LEGAL + "RecordLegalRequest": _p(roles=_OPS, all_tenants=True),
    _LEGAL + "ApproveLegalRequest": _p(roles=[OPS_ADMIN], all_tenants=True),
    _LEGAL + "RejectLegalRequest": _p(roles=[OPS_ADMIN], all_tenants=True),
    _LEGAL + "ExecuteLegalRequest": _p(roles=[OPS_ADMIN], all_tenants=True, cap=600.0),
    _LEGAL + "ListLegalRequests": _p(roles=_OPS, all_tenants=True),
    _LEGAL + "TransparencyReport": _p(roles=_OPS, all_tenants=True),
}


def policy_for(method: str) -> RoutePolicy | None:
    """The policy of a full method name, or None (which callers must treat as deny)."""
    return POLICIES.get(method)


def check_complete(methods: Iterable[str]) -> None:
    """Raise when any served method lacks a policy (fail closed at start-up, not at the first call)."""
    missing = sorted(m for m in methods if m not in POLICIES)
    if missing:
        raise RuntimeError(f"no access policy for: {', '.join(missing)} — add them to services/gateway/policy.py")
