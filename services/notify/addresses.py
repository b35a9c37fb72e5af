"""Subjects' addresses from the vault at send time: :class:`VaultAddressBook` over ``GetSubjectContact``; and,
for ``BreachImpact``, the ids of the subjects a principal touched (``ListTouchedSubjects``, ids only).

The vault serves the method only to the peer whose mTLS client certificate names ``notify``; the channel is the
``vault`` upstream of :class:`~services.chassis.upstreams.Upstreams` (notify's client certificate). The address
lives in the reply and in the delivery engine's memory for one send; it is never stored or logged.

The vault's refusals become the delivery's outcome (see ``DeliveryEngine._send``): an erased or restricted subject
is SUPPRESSED with that reason, an unknown one FAILED; only an unreachable vault is retried (with the delivery's
backoff, up to its attempts).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import grpc
from grpc import aio
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from services.chassis.errors import DomainError, FailedPrecondition, NotFound, Reason, Unavailable, error_reason
from services.chassis.identity import CallerIdentity, identity_metadata
from services.chassis.timestamps import to_timestamp

__all__ = ["VaultAddressBook"]

_CHANNELS = {"email": vault_pb2.CONTACT_CHANNEL_EMAIL, "whatsapp": vault_pb2.CONTACT_CHANNEL_WHATSAPP}
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class VaultAddressBook:
    """:class:`~services.notify.deliveries.AddressBook` asking the vault (``VaultContactService``)."""

    def __init__(self, channel: Callable[[], aio.Channel], *, timeout_s: float) -> None:
        self._channel = channel
        self.timeout_s = timeout_s

    async def address(self, tenant_id: str, subject_id: str, channel: str) -> str:
        """The subject's address for ``channel``; "" when the vault holds none; a DomainError when refused."""
        contact_channel = _CHANNELS.get(channel)
        if contact_channel is None:
            return ""
        stub = vault_pb2_grpc.VaultContactServiceStub(self._channel())
        try:
            answer = await stub.GetSubjectContact(
                vault_pb2.GetSubjectContactRequest(tenant_id=tenant_id, subject_id=subject_id, channel=contact_channel),
                metadata=_as_notify(tenant_id),
                timeout=self.timeout_s,
            )
        except aio.AioRpcError as err:
            raise _refusal(err) from None
        return answer.address

    async def touched_subjects(self, tenant_id: str, principal: str, start: datetime, end: datetime) -> list[str]:
        """Ids of the tenant's subjects ``principal`` touched in ``[start, end)``, from the vault's audit (every
        page); a DomainError when the vault refuses or cannot be reached (``Unavailable``)."""
        stub = vault_pb2_grpc.VaultContactServiceStub(self._channel())
        found: list[str] = []
        token = ""
        while True:
            request = vault_pb2.ListTouchedSubjectsRequest(
                tenant_id=tenant_id,
                principal=principal,
                window_start=to_timestamp(start),
                window_end=to_timestamp(end),
                page_token=token,
            )
            try:
                page = await stub.ListTouchedSubjects(request, metadata=_as_notify(tenant_id), timeout=self.timeout_s)
            except aio.AioRpcError as err:
                raise _refusal(err) from None
            found.extend(page.subject_ids)
            token = page.next_page_token
            if not token:
                return found


def _as_notify(tenant_id: str) -> tuple[tuple[str, str], ...]:
    return identity_metadata(CallerIdentity(tenant_id=tenant_id, principal="service:notify", principal_kind="service"))


def _refusal(err: aio.AioRpcError) -> DomainError:
    """The vault's error as notify's own (its message is the vault's, which holds no personal data)."""
    reason = error_reason(err)
    if reason in (Reason.SUBJECT_ERASED, Reason.SUBJECT_RESTRICTED):
        return FailedPrecondition("the vault refuses to give this subject's address", reason=Reason(reason))
    if reason == Reason.SUBJECT_NOT_FOUND:
        return NotFound("the vault knows no such subject", reason=Reason.SUBJECT_NOT_FOUND)
    if err.code() in _TRANSIENT and reason is None:
        return Unavailable("the vault is unavailable; the send is retried", reason=Reason.UPSTREAM_UNAVAILABLE)
    # PERMISSION_DENIED (the vault does not admit notify's certificate) and the rest: a configuration fault that
    # ends the delivery FAILED with this reason, for on-call to see, instead of retrying it forever.
    denied = err.code() == grpc.StatusCode.PERMISSION_DENIED
    return FailedPrecondition(
        f"the vault refused the lookup ({err.code().name})",
        reason=Reason.PEER_NOT_ALLOWED if denied else _known(reason),
    )


def _known(reason: str | None) -> Reason | None:
    """The vault's reason when it is one of ours (e.g. TENANT_NOT_FOUND), kept for the caller to see."""
    try:
        return Reason(reason) if reason else None
    except ValueError:
        return None
