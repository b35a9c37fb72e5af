"""NATS handlers of the gateway: drop revoked API keys from this replica's cache at once.

A plain (non-durable) subscription on ``steward.gateway.apikey.revoked``: every replica sees every
revocation while connected. Nothing is lost when NATS is down or a message is missed — the key
cache's TTL (< 1 s) bounds how long a revoked key can live anyway; this only shortens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from google.protobuf.message import DecodeError
from steward.events.v1 import events_pb2

from services.chassis.bus import Bus
from services.chassis.catalog import subject_of
from services.gateway.apikeys import ApiKeyAuthenticator

log = logging.getLogger("steward.gateway.handlers")

__all__ = ["REVOCATION_SUBJECT", "RevocationListener"]

REVOCATION_SUBJECT = subject_of(events_pb2.ApiKeyRevoked)


class RevocationListener:
    """Evicts revoked keys from the local :class:`ApiKeyAuthenticator` cache."""

    def __init__(self, bus: Bus, keys: ApiKeyAuthenticator) -> None:
        self.bus = bus
        self.keys = keys
        self.evicted = 0
        self._task: asyncio.Task[None] | None = None
        self._sub: Any = None

    async def on_message(self, msg: Any) -> None:
        """Handle one revocation event."""
        event = events_pb2.Event()
        try:
            event.ParseFromString(msg.data)
        except DecodeError:
            log.warning("undecodable revocation event ignored")
            return
        if event.WhichOneof("payload") == "api_key_revoked":
            self.keys.evict(event.api_key_revoked.key_id)
            self.evicted += 1

    async def _subscribe(self) -> None:
        await self.bus.connected.wait()
        assert self.bus.nc is not None
        # nats-py re-establishes core subscriptions after a reconnect by itself.
        self._sub = await self.bus.nc.subscribe(REVOCATION_SUBJECT, cb=self.on_message)

    async def start(self) -> None:
        """Subscribe in the background as soon as the bus is connected."""
        self._task = asyncio.create_task(self._subscribe(), name="revocation-listener")

    async def stop(self) -> None:
        """Unsubscribe."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
