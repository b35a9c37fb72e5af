"""The plaintext scan of a whole stack: the canaries the privacy flows planted must appear nowhere at rest.

The privacy flows store people with unique email addresses and names and send notices with unique template
variables (:attr:`~tests.system.harness.privacy.PrivacyLedger.canaries`). After the campaign every column of every
table of every service database (vault, its tombstone ledger, gateway, dsr, notify), the raw SQLite files and
WALs, the stack's log (every process writes there) and every message of every JetStream stream (read as the
``ops`` user) is searched for them. The SMTP sink's spool is the one place they belong (it is the recipient's
mailbox) and is not searched. A positive control — the demo tenant's id, which is stored in the clear — must be
found, so a scan that finds nothing has looked.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from nats.js.api import ConsumerConfig, DeliverPolicy

from tests.integration.vault.helpers import RawDatabase, leaks
from tests.system.harness.stack import SystemStack

__all__ = ["CanaryScan", "scan_for_canaries"]


@dataclass
class CanaryScan:
    """Where planted values were found (``{place: [canary, ...]}``) and what was looked at."""

    needles: int = 0
    places: list[str] = field(default_factory=list)
    found: dict[str, list[str]] = field(default_factory=dict)
    control_seen: bool = False
    messages: int = 0

    def note(self, place: str, haystack: bytes, needles: Iterable[str], tenant: str) -> None:
        """Search ``haystack``; remember any canary found, and whether the control (the tenant id) was seen."""
        hits = leaks(haystack, needles)
        if hits:
            self.found.setdefault(place, []).extend(hits)
        self.control_seen = self.control_seen or (bool(tenant) and tenant.encode() in haystack)


def _database_urls(stack: SystemStack) -> list[str]:
    """Every database of the stack: each service's, and (on SQLite) every file under ``data/``."""
    if stack.database == "postgresql":
        base = sa.engine.make_url(next(iter(stack.database_urls().values())))
        return [base.set(database=name).render_as_string(hide_password=False) for name in stack.pg_databases]
    return [f"sqlite:///{path}" for path in sorted((stack.home / "data").glob("*.db"))]


async def scan_for_canaries(stack: SystemStack, needles: list[str]) -> CanaryScan:
    """Search databases, SQLite files, the stack log and every JetStream stream for ``needles``."""
    tenant = json.loads((stack.home / "demo.json").read_text())["tenant_id"]
    scan = CanaryScan(needles=len(needles))
    for url in _database_urls(stack):
        raw = RawDatabase(url)
        try:
            place = sa.engine.make_url(url).database or url
            scan.places.append(place)
            for table, value in raw.every_value():
                scan.note(f"{place}:{table}", value, needles, tenant)
            if url.startswith("sqlite"):
                scan.note(f"{place} (raw file + WAL)", raw.file_bytes(), needles, tenant)
        finally:
            raw.close()
    log = stack.root / "stack.log"
    scan.places.append(str(log))
    scan.note("stack log", log.read_bytes(), needles, "")
    nc = await stack.ops_nats()
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name
            scan.places.append(f"stream {name}")
            if not info.state.messages:
                continue
            for subject in info.config.subjects or []:
                await _scan_subject(js, name, subject, scan, needles, tenant)
    finally:
        await nc.close()
    return scan


async def _scan_subject(js: Any, stream: str, subject: str, scan: CanaryScan, needles: list[str], tenant: str) -> None:
    """Read every message of ``stream`` under ``subject`` from the start (an ordered ephemeral consumer)."""
    sub = await js.subscribe(
        subject, stream=stream, ordered_consumer=True, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=3)
            except TimeoutError:
                return
            scan.messages += 1
            headers = repr(sorted((msg.headers or {}).items())).encode()
            scan.note(f"stream {stream}", msg.subject.encode() + msg.data + headers, needles, tenant)
            if msg.metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()
