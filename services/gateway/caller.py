"""The caller of one RPC, as admission established it, and where handlers find it.

:class:`~services.gateway.admission.AdmissionInterceptor` authenticates the call and runs the handler
inside :func:`acting_as`; handlers (the gateway's servicers, forwarding) read :func:`current_caller`,
and the access log records it. This module depends on neither, so they do not depend on each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime

from services.chassis.errors import Unauthenticated
from services.chassis.identity import CallerIdentity

__all__ = ["NO_CREDENTIAL", "Caller", "acting_as", "current_caller"]

NO_CREDENTIAL = "no credential: send 'authorization: Bearer <API key or operator token>'"


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated caller of one RPC, as the gateway established it."""

    kind: str  # api_key | operator | support
    principal: str
    tenant_id: str
    credential_id: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    roles: frozenset[str] = field(default_factory=frozenset)
    support_grant_id: str = ""
    expires_at: datetime | None = None

    def identity(self) -> CallerIdentity:
        """The identity metadata services receive (tenant always from the credential)."""
        return CallerIdentity(
            tenant_id=self.tenant_id,
            principal=self.principal,
            principal_kind=self.kind,
            credential_id=self.credential_id,
            scopes=self.scopes,
            support_grant_id=self.support_grant_id,
        )

    def has_role(self, *roles: str) -> bool:
        """True for an operator holding any of ``roles``."""
        return self.kind == "operator" and bool(self.roles.intersection(roles))


_current: ContextVar[Caller | None] = ContextVar("steward_gateway_caller", default=None)


def current_caller() -> Caller:
    """The caller admitted for the running RPC."""
    caller = _current.get()
    if caller is None:
        raise Unauthenticated(NO_CREDENTIAL)
    return caller


@contextlib.contextmanager
def acting_as(caller: Caller) -> Iterator[None]:
    """Make ``caller`` the :func:`current_caller` of the code run inside (one RPC's handler)."""
    token = _current.set(caller)
    try:
        yield
    finally:
        _current.reset(token)
