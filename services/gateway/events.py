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
from services.chassis.tasks import BackgroundTask
from services.gateway.apikeys import ApiKeyAuthenticator

log = logging.getLogger("steward.gateway.events")

__all__ = ["REVOCATION_SUBJECT", "RevocationListener"]

REVOCATION_SUBJECT = subject_of(events_pb2.ApiKeyRevoked)


class RevocationListener(BackgroundTask):
    """Evicts revoked keys from the local :class:`ApiKeyAuthenticator` cache."""

    def __init__(self, bus: Bus, keys: ApiKeyAuthenticator) -> None:
        super().__init__("revocation-listener")
        self.bus = bus
        self.keys = keys
        self.evicted = 0
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

    async def run(self) -> None:
        """Subscribe as soon as the bus is connected, then return (the subscription lives on)."""
        delay = 0.1
        while True:
            await self.bus.connected.wait()
            assert self.bus.nc is not None
            try:
                # nats-py re-establishes core subscriptions after a reconnect by itself.
                self._sub = await self.bus.nc.subscribe(REVOCATION_SUBJECT, cb=self.on_message)
                return
            except Exception as exc:
                log.warning("revocation subscribe failed; retrying", extra={"error_type": type(exc).__name__})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def finish(self) -> None:
        """Unsubscribe."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
