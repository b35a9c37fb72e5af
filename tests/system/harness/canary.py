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
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from nats.js.api import ConsumerConfig, DeliverPolicy

from tests.integration.vault.helpers import RawDatabase
from tests.system.harness.stack import SystemStack

__all__ = ["CanaryScan", "Needles", "scan_for_canaries"]


@dataclass
class CanaryScan:
    """Where planted values were found (``{place: [canary, ...]}``) and what was looked at."""

    needles: int = 0
    places: list[str] = field(default_factory=list)
    found: dict[str, list[str]] = field(default_factory=dict)
    control_seen: bool = False
    messages: int = 0

    def note(self, place: str, haystack: bytes, needles: Needles, tenant: str) -> None:
        """Search ``haystack``; remember any canary found, and whether the control (the tenant id) was seen."""
        hits = needles.find(haystack)
        if hits:
            self.found.setdefault(place, []).extend(hits)
        self.control_seen = self.control_seen or (bool(tenant) and tenant.encode() in haystack)


@dataclass(frozen=True)
class Needles:
    """The canaries, searched in one pass per haystack: a regex finds where any of their 4-byte prefixes occurs (the
    flows' canaries share one), and only there is each canary with that prefix compared."""

    values: tuple[str, ...]
    by_prefix: dict[bytes, tuple[bytes, ...]]
    pattern: re.Pattern[bytes]

    @classmethod
    def of(cls, values: Iterable[str]) -> Needles:
        """Index ``values`` by prefix."""
        ordered = tuple(sorted(set(values)))
        groups: dict[bytes, list[bytes]] = {}
        for value in ordered:
            groups.setdefault(value.encode()[:4], []).append(value.encode())
        pattern = re.compile(b"|".join(re.escape(prefix) for prefix in groups) or b"(?!)")
        return cls(ordered, {prefix: tuple(found) for prefix, found in groups.items()}, pattern)

    def find(self, haystack: bytes) -> list[str]:
        """The canaries that occur in ``haystack``."""
        hits: set[bytes] = set()
        for match in self.pattern.finditer(haystack):
            at = match.start()
            hits.update(value for value in self.by_prefix[match.group()] if haystack.startswith(value, at))
        return sorted(hit.decode() for hit in hits)


def _database_urls(stack: SystemStack) -> list[str]:
    """Every database of the stack: each service's, and (on SQLite) every file under ``data/``."""
    if stack.database == "postgresql":
        base = sa.engine.make_url(next(iter(stack.database_urls().values())))
        return [base.set(database=name).render_as_string(hide_password=False) for name in stack.pg_databases]
    return [f"sqlite:///{path}" for path in sorted((stack.home / "data").glob("*.db"))]


async def scan_for_canaries(stack: SystemStack, canaries: list[str]) -> CanaryScan:
    """Search databases, SQLite files, the stack log and every JetStream stream for ``canaries``."""
    tenant = json.loads((stack.home / "demo.json").read_text())["tenant_id"]
    needles = Needles.of(canaries)
    scan = CanaryScan(needles=len(needles.values))
    for url in _database_urls(stack):
        raw = RawDatabase(url)
        try:
            place = sa.engine.make_url(url).database or url
            scan.places.append(place)
            tables: dict[str, list[bytes]] = {}
            for table, value in raw.every_value():
                tables.setdefault(table, []).append(value)
            for table, values in tables.items():
                scan.note(f"{place}:{table}", b"\0".join(values), needles, tenant)
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


async def _scan_subject(js: Any, stream: str, subject: str, scan: CanaryScan, needles: Needles, tenant: str) -> None:
    """Read every message of ``stream`` under ``subject`` from the start (an ordered ephemeral consumer)."""
    blobs: list[bytes] = []
    sub = await js.subscribe(
        subject, stream=stream, ordered_consumer=True, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=3)
            except TimeoutError:
                break
            scan.messages += 1
            blobs.append(msg.subject.encode() + msg.data + repr(sorted((msg.headers or {}).items())).encode())
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    scan.note(f"stream {stream}", b"\0".join(blobs), needles, tenant)
