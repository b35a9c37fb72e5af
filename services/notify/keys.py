"""Envelope encryption of what notify keeps personal until a send is final (contacts, template variables).

Each tenant gets one data key (a DEK: 32 random bytes), wrapped by notify's Transit key (``steward-notify``)
with the tenant and key id as associated data, and stored wrapped in ``notify_data_keys``. Unwrapped DEKs are
cached in memory per process. Every sealed value is AES-256-GCM under the tenant's DEK with associated data
naming what it is (``contact``/``payload``, tenant, row id), so a blob copied to another row does not open.

The sealing primitives are the vault's (:mod:`services.vault.sealing`); the Transit client is the vault's too,
pointed at notify's own key (its token may use only that key).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.chassis.clock import Clock
from services.chassis.ids import new_id
from services.chassis.transit import TransitClient
from services.notify.models import DataKeyRow
from services.vault.sealing import Sealer, key_aad, new_key

__all__ = ["TenantKeys", "value_aad"]

# The Transit client names keys ``prefix + owner``: notify's one key is the prefix "steward-" + "notify".
TRANSIT_PREFIX = "steward-"


def value_aad(kind: str, tenant_id: str, row_id: str) -> bytes:
    """Associated data of one sealed value (length-prefixed fields, like the vault's)."""
    parts = []
    for field in ("notify.v1", kind, tenant_id, row_id):
        encoded = field.encode("utf-8")
        parts.append(len(encoded).to_bytes(4, "big") + encoded)
    return b"".join(parts)


class TenantKeys:
    """Per-tenant DEKs wrapped by notify's Transit key; seal and open JSON values with them.

    Methods run on database worker threads (the Transit client is blocking); the cache is thread-safe.
    """

    def __init__(self, transit: TransitClient, key_owner: str, clock: Clock) -> None:
        self.transit = transit
        self.key_owner = key_owner  # Transit key = TRANSIT_PREFIX + key_owner
        self.clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[str, Sealer]] = {}  # tenant -> (key id, sealer)
        self._by_id: dict[str, Sealer] = {}

    def ensure_key(self) -> None:
        """Create notify's Transit key (idempotent; start-up)."""
        self.transit.create_tenant_key(self.key_owner)

    def _aad(self, tenant_id: str, key_id: str) -> bytes:
        return key_aad(f"notify:{tenant_id}", key_id)

    def current(self, session: Session, tenant_id: str) -> tuple[str, Sealer]:
        """The tenant's key (id, sealer), made and wrapped on first use."""
        with self._lock:
            cached = self._cache.get(tenant_id)
        if cached is not None:
            return cached
        row = session.scalars(
            select(DataKeyRow).where(DataKeyRow.tenant_id == tenant_id).order_by(DataKeyRow.created_at).limit(1)
        ).first()
        if row is None:
            dek, key_id = new_key(), new_id()
            (wrapped,) = self.transit.wrap(self.key_owner, [(dek, self._aad(tenant_id, key_id))])
            session.add(DataKeyRow(key_id=key_id, tenant_id=tenant_id, wrapped=wrapped, created_at=self.clock.now()))
            session.flush()
        else:
            key_id = row.key_id
            (dek,) = self.transit.unwrap(self.key_owner, [(row.wrapped, self._aad(tenant_id, key_id))])
        sealer = Sealer(dek)
        del dek
        with self._lock:
            self._cache[tenant_id] = (key_id, sealer)
            self._by_id[key_id] = sealer
        return key_id, sealer

    def _by_key_id(self, session: Session, tenant_id: str, key_id: str) -> Sealer:
        with self._lock:
            sealer = self._by_id.get(key_id)
        if sealer is not None:
            return sealer
        row = session.get(DataKeyRow, key_id)
        if row is None or row.tenant_id != tenant_id:
            raise LookupError("data key not found")
        (dek,) = self.transit.unwrap(self.key_owner, [(row.wrapped, self._aad(tenant_id, key_id))])
        sealer = Sealer(dek)
        with self._lock:
            self._by_id[key_id] = sealer
        return sealer

    def seal(self, session: Session, tenant_id: str, kind: str, row_id: str, value: Any) -> tuple[str, bytes]:
        """(key id, sealed bytes) of ``value`` as canonical JSON."""
        key_id, sealer = self.current(session, tenant_id)
        plain = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        return key_id, sealer.seal(plain, value_aad(kind, tenant_id, row_id))

    def open(self, session: Session, tenant_id: str, kind: str, row_id: str, key_id: str, sealed: bytes) -> Any:
        """The JSON value sealed by :meth:`seal`."""
        sealer = self._by_key_id(session, tenant_id, key_id)
        return json.loads(sealer.open(sealed, value_aad(kind, tenant_id, row_id)))
