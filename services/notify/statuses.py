"""WhatsApp statuses in notify's database: the SQL :class:`~services.notify.webhooks.StatusStore`.

A WhatsApp send that the provider accepts leaves a ``notify_provider_statuses`` row with an empty status, keyed by
the ``wamid`` (:func:`track`, inside the transaction that records the send). A webhook naming any other id is not
ours: its compare-and-set changes nothing.

:meth:`SqlStatusStore.compare_and_set` is one conditional ``UPDATE … WHERE message_id = :id AND status = :expected
…``: two webhooks racing for the same message cannot both win, whatever the number of notify replicas. In the same
transaction the merged status is applied to the delivery (``SENT`` → ``DELIVERED`` → ``READ``, or ``FAILED`` with
``wa_<code>``), and a ``failed`` whose code says the recipient cannot or will not receive (131026, 131050) puts the
address's hash on the suppression list, so no effect is lost between the two.
"""

from __future__ import annotations

from datetime import UTC

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.chassis.clock import Clock
from services.chassis.db import Database
from services.chassis.fastsql import insert_rows
from services.notify import consent
from services.notify.consent import Recipient
from services.notify.models import DeliveryRow, ProviderStatusRow
from services.notify.webhooks import DeliveryStatus, StatusState
from services.notify.whatsapp import SUPPRESS_CODES

__all__ = ["SqlStatusStore", "track"]

_DELIVERY_STATUS = {
    DeliveryStatus.DELIVERED: "DELIVERED",
    DeliveryStatus.READ: "READ",
    DeliveryStatus.FAILED: "FAILED",
}


def track(session: Session, sent: list[tuple[str, str, str]]) -> None:
    """Remember WhatsApp messages we sent, ``(message id, delivery id, tenant id)`` each, so their webhooks are
    recognised as ours (no status yet); one SELECT for the whole batch."""
    if not sent:
        return
    table = ProviderStatusRow.__table__
    known = set(session.scalars(select(table.c.message_id).where(table.c.message_id.in_([m for m, _, _ in sent]))))
    rows = []
    for message_id, delivery_id, tenant_id in sent:
        if message_id not in known:
            known.add(message_id)
            rows.append({"message_id": message_id, "delivery_id": delivery_id, "tenant_id": tenant_id, "status": ""})
    insert_rows(session.connection(), table, rows)  # type: ignore[arg-type]  # one statement for the batch


def _state(row: ProviderStatusRow | None) -> StatusState | None:
    if row is None or not row.status or row.status_at is None:
        return None
    at = row.status_at if row.status_at.tzinfo else row.status_at.replace(tzinfo=UTC)
    return StatusState(DeliveryStatus(row.status), row.error_code, at)


class SqlStatusStore:
    """Merged WhatsApp statuses in ``notify_provider_statuses``, applied to the deliveries they belong to."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def current(self, message_id: str) -> StatusState | None:
        """The stored state (None: no status yet, or not our message)."""

        def read(session: Session) -> StatusState | None:
            return _state(session.get(ProviderStatusRow, message_id))

        return await self.db.run(read)

    async def compare_and_set(self, message_id: str, expected: StatusState | None, new: StatusState) -> bool:
        """Store ``new`` if the state is still ``expected`` (one conditional UPDATE) and apply it to the delivery."""
        return await self.db.run(lambda s: self._swap(s, message_id, expected, new))

    def _swap(self, session: Session, message_id: str, expected: StatusState | None, new: StatusState) -> bool:
        # A status only moves forward (merge_status), so the stored status alone names the state expected.
        previous = "" if expected is None else expected.status.value
        guard = [ProviderStatusRow.message_id == message_id, ProviderStatusRow.status == previous]
        changed = session.execute(
            update(ProviderStatusRow)
            .where(*guard)
            .values(status=new.status.value, error_code=new.error_code, status_at=new.at)
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            return False
        delivery_id = session.scalars(
            select(ProviderStatusRow.delivery_id).where(ProviderStatusRow.message_id == message_id)
        ).one()
        self._apply(session, delivery_id, new)
        return True

    def _apply(self, session: Session, delivery_id: str, new: StatusState) -> None:
        row = session.get(DeliveryRow, delivery_id)
        target = _DELIVERY_STATUS.get(new.status)
        if row is None or target is None:
            return
        now = self.clock.now()
        row.status = target
        row.updated_at = now
        if new.status is DeliveryStatus.FAILED:
            code = new.error_code or 0
            row.reason_code = f"wa_{code}"
            if code in SUPPRESS_CODES and row.recipient_hash:
                consent.suppress(
                    session,
                    self.clock,
                    row.tenant_id,
                    row.channel,
                    row.recipient_hash,
                    Recipient(row.recipient_kind, row.recipient_id),
                    row.reason_code,
                )
