"""The business client's own account data as one portable document (schema ``steward.account.v1``).

Everything the registry holds about a tenant — details, representatives (opened from their sealed
column), communication preferences, offboarding settings, API keys' metadata and the support grants the
tenant can see — and nothing the tenant must not get: no key secrets or hashes, no grant of a legal request
whose notice is still withheld.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from services.gateway import apikeys, grants, tenants
from services.gateway.models import ApiKeyRow, SupportGrantRow, TenantRow

__all__ = ["ACCOUNT_SCHEMA", "account_document"]

ACCOUNT_SCHEMA = "steward.account.v1"


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _tenant(row: TenantRow, sealer: tenants.RegistrySealer) -> dict[str, Any]:
    return {
        "tenant_id": row.id,
        "company_name": row.company_name,
        "industry": row.industry,
        "size": row.size,
        "representatives": [asdict(rep) for rep in sealer.open(row.id, row.representatives_sealed)],
        "communication_preferences": {
            "preferred_channel": row.preferred_channel,
            "language": row.language,
            "product_updates": row.product_updates,
        },
        "state": row.state,
        "version": row.version,
        "created_at": _time(row.created_at),
        "updated_at": _time(row.updated_at),
        "closed_at": _time(row.closed_at),
        "closed_by": row.closed_by,
        "grace_period_days": row.grace_period_days,
        "shred_after": _time(tenants.shred_after(row)),
        "reopened_at": _time(row.reopened_at),
        "reopened_by": row.reopened_by,
    }


def _key(row: ApiKeyRow, now: datetime) -> dict[str, Any]:
    # Metadata only: secret_hash is deliberately absent.
    return {
        "key_id": row.id,
        "name": row.name,
        "env": row.env,
        "scopes": row.scopes.split(),
        "state": apikeys.key_state(row, now),
        "created_at": _time(row.created_at),
        "created_by": row.created_by,
        "expires_at": _time(row.expires_at),
        "revoked_at": _time(row.revoked_at),
        "rotated_from": row.rotated_from,
    }


def _grant(row: SupportGrantRow, now: datetime) -> dict[str, Any]:
    return {
        "grant_id": row.id,
        "principal": row.principal,
        "reason": row.reason,
        "ticket_id": row.ticket_id,
        "state": grants.grant_state(row, now),
        "emergency": row.emergency,
        "requested_at": _time(row.requested_at),
        "approved_at": _time(row.approved_at),
        "approved_by": row.approved_by,
        "expires_at": _time(row.expires_at),
        "revoked_at": _time(row.revoked_at),
        "legal_request_id": row.legal_request_id,
    }


def account_document(session: Session, tenant_id: str, *, sealer: tenants.RegistrySealer, now: datetime) -> bytes:
    """The ``steward.account.v1`` JSON document of ``tenant_id`` (NOT_FOUND for an unknown tenant)."""
    row = tenants.get_tenant(session, tenant_id)
    keys = apikeys.list_keys(session, tenant_id, include_inactive=True, now=now)
    visible = grants.list_grants(
        session, tenant_id=tenant_id, principal=None, include_inactive=True, now=now, tenant_view=True
    )
    document = {
        "schema": ACCOUNT_SCHEMA,
        "exported_at": now.isoformat(),
        "tenant": _tenant(row, sealer),
        "api_keys": [_key(key, now) for key in keys],
        "support_grants": [_grant(grant, now) for grant in visible],
    }
    return json.dumps(document, indent=2, sort_keys=True).encode()
