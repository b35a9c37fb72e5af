"""A leader lease in dsr's database: among dsr replicas sharing one database, only the holder runs the periodic
retention sweep.

A lease is a row (name, holder, expires_at). Taking or renewing it is one conditional UPDATE — it succeeds only
when the row is this replica's already or has expired — so two replicas never both hold it; the first taker of
a name inserts the row (the primary key settles a race). Time is the injected clock's: a test moves it past
``expires_at`` to hand the lease over.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.chassis.clock import Clock
from services.dsr.models import LeaseRow

__all__ = ["take_lease"]


def take_lease(session: Session, clock: Clock, *, name: str, holder: str, ttl: timedelta) -> bool:
    """Take or renew lease ``name`` for ``holder`` until now + ``ttl``; False while another holder's is live."""
    now = clock.now()
    taken = session.execute(
        update(LeaseRow)
        .where(LeaseRow.name == name, or_(LeaseRow.holder == holder, LeaseRow.expires_at <= now))
        .values(holder=holder, expires_at=now + ttl)
    )
    if taken.rowcount:  # type: ignore[attr-defined]
        return True
    if session.get(LeaseRow, name) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(LeaseRow(name=name, holder=holder, expires_at=now + ttl))
    except IntegrityError:
        return False  # another replica inserted it first
    return True
