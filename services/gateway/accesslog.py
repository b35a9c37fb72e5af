"""PII-free access log: one entry per call (principal, tenant, method, status, latency, credential id).

Entries are buffered in memory and written to the outbox every ``flush_s`` as one
``gateway.access.logged`` event per tenant, in one transaction, so logging costs no database round
trip on the request path. The trade-off: a crash loses at most one flush interval of entries; calls
under support grants are additionally written synchronously (``support_accesses``) and lose nothing.
Nothing from the request or response body is ever recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING

from google.protobuf.timestamp_pb2 import Timestamp
from steward.events.v1 import events_pb2

from services.chassis.bus import enqueue, make_event
from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.db import Database
from services.chassis.tasks import BackgroundTask

if TYPE_CHECKING:
    from services.gateway.admission import Caller

log = logging.getLogger("steward.gateway.access")

__all__ = ["AccessLog"]


class AccessLog(BackgroundTask):
    """Buffers access entries and flushes them to the outbox in batches (and once more on stop)."""

    def __init__(self, db: Database, *, flush_s: float, max_buffer: int, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__("access-log-flush")
        self._db = db
        self._flush_s = flush_s
        self._max = max_buffer
        self._clock = clock
        self._buffer: list[tuple[datetime, Caller | None, str, str, int]] = []
        self.dropped = 0
        self.written = 0
        self.failed_completions = 0

    def record(self, caller: Caller | None, method: str, status: str, elapsed_s: float) -> None:
        """Add one entry (never blocks, never raises). Kept as a tuple: protobufs are built at flush time."""
        if len(self._buffer) >= self._max:
            self.dropped += 1
            return
        self._buffer.append((self._clock.now(), caller, method, status, int(elapsed_s * 1_000_000)))

    @staticmethod
    def _entry(
        at: datetime, caller: Caller | None, method: str, status: str, latency_us: int
    ) -> events_pb2.AccessEntry:
        stamp = Timestamp()
        stamp.FromDatetime(at)
        entry = events_pb2.AccessEntry(
            method=method, status=status, latency_us=latency_us, at=stamp, principal_kind="anonymous"
        )
        if caller is not None:
            entry.principal = caller.principal
            entry.principal_kind = caller.kind
            entry.tenant_id = caller.tenant_id
            entry.credential_id = caller.credential_id
            entry.support_grant_id = caller.support_grant_id
        return entry

    async def flush(self) -> int:
        """Write buffered entries (one event per tenant); returns how many were written."""
        if not self._buffer:
            return 0
        batch, self._buffer = self._buffer, []
        by_tenant: dict[str, list[events_pb2.AccessEntry]] = defaultdict(list)
        for item in batch:
            entry = self._entry(*item)
            by_tenant[entry.tenant_id].append(entry)
        now = self._clock.now()
        events = [
            make_event(
                events_pb2.AccessLogged(entries=entries),
                source="gateway",
                tenant_id=tenant,
                occurred_at=now,
            )
            for tenant, entries in by_tenant.items()
        ]

        def write(session: object) -> None:
            for event in events:
                enqueue(session, event)  # type: ignore[arg-type]

        try:
            await self._db.run(write)
        except Exception:
            # Put the entries back (bounded) so a database blip does not lose them.
            room = max(0, self._max - len(self._buffer))
            self._buffer[:0] = batch[:room]
            self.dropped += len(batch) - min(room, len(batch))
            raise
        self.written += len(batch)
        return len(batch)

    async def run(self) -> None:
        """Flush every ``flush_s``; a failed flush keeps its entries for the next one."""
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("access log flush failed; will retry", extra={"error_type": type(exc).__name__})

    async def finish(self) -> None:
        """Write what is left once the loop has stopped."""
        with contextlib.suppress(Exception):
            await self.flush()
