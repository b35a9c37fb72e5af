"""BreachImpact lists the subjects too: for each tenant the access log shows a credential touched, notify asks the
vault (ListTouchedSubjects over mTLS with notify's certificate) which subjects that credential's principal touched
in the window, and lists exactly those; a tenant the vault cannot answer for, or a notify without a reachable vault,
still gets its tenants, with the reason the subjects are missing. Real NATS, vault, OpenBao and notify."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from steward.notify.v1 import notify_pb2 as pb
from steward.vault.v1 import vault_pb2

from services.chassis.timestamps import to_timestamp
from tests.integration.notify.support import NotifyFactory, NotifyHarness
from tests.integration.notify.test_breach_notices import OPERATOR
from tests.integration.notify.test_core_events import publish
from tests.integration.notify.test_impact_access_log import access, bus_ready, logged
from tests.integration.vault.helpers import canary_email, lead
from tests.integration.vault.test_subject_contact import MtlsVault, _md, start_mtls_vault
from tests.plugins.infra import NatsServer
from tests.plugins.stack import VaultFactory
from tests.plugins.waiting import eventually


def vault_upstream(vault: MtlsVault) -> dict[str, Any]:
    return {
        "vault": {
            "address": f"localhost:{vault.port}",
            "ca_file": str(vault.pki.ca_file),
            "cert_file": str(vault.pki["notify"].cert_file),
            "key_file": str(vault.pki["notify"].key_file),
        }
    }


async def log_rows(h: NotifyHarness, count: int) -> None:
    await eventually(
        lambda: h.raw_db().scalar("SELECT count(*) FROM notify_access_log") == count, 30, what="access log rows"
    )


def window(now: datetime) -> pb.BreachImpactRequest:
    return pb.BreachImpactRequest(
        window_start=to_timestamp(now - timedelta(hours=1)), window_end=to_timestamp(now + timedelta(hours=1))
    )


async def test_impact_lists_exactly_the_subjects_a_credential_touched(
    nats_server: NatsServer, notify_factory: NotifyFactory, vault_factory: VaultFactory, tmp_path: Path
) -> None:
    vault = await start_mtls_vault(vault_factory, f"sqlite:///{tmp_path / 'vault.db'}", tmp_path)
    try:
        leaked, other = f"k-{uuid.uuid4().hex[:10]}", f"k-{uuid.uuid4().hex[:10]}"
        a, b = await vault.new_tenant(), await vault.new_tenant()
        absent = f"t-{uuid.uuid4().hex[:10]}"  # in the access log, unknown to the vault

        async def new_lead(tenant: str) -> vault_pb2.Record:
            reply = await vault.records().PutRecord(
                vault_pb2.PutRecordRequest(record=lead(email=canary_email())), metadata=_md(tenant, "key:app")
            )
            return reply.record

        async def read(tenant: str, credential: str, record: vault_pb2.Record) -> None:
            request = vault_pb2.GetRecordRequest(record_id=record.id)
            await vault.records().GetRecord(request, metadata=_md(tenant, f"key:{credential}"))

        a1, a2, a3, b1 = await new_lead(a), await new_lead(a), await new_lead(a), await new_lead(b)
        await read(a, leaked, a1)
        await read(a, leaked, a2)
        await read(a, other, a3)  # another credential's touch
        await read(b, leaked, b1)

        now = datetime.now(UTC)
        h = await notify_factory(nats_url=nats_server.url, upstreams=vault_upstream(vault))
        await bus_ready(h)
        for tenant, credential in ((a, leaked), (a, other), (b, leaked), (absent, leaked)):
            await publish(nats_server.url, logged(tenant, [access(tenant, credential, now)]))
        await log_rows(h, 4)

        answer = await h.notify.BreachImpact(_with(window(now), credential_id=leaked), metadata=OPERATOR)
        found = {t.tenant_id: (sorted(t.subject_ids), t.subjects_unavailable_reason) for t in answer.tenants}
        assert found == {
            a: (sorted([a1.subject_id, a2.subject_id]), ""),
            b: ([b1.subject_id], ""),
            absent: ([], "tenant_not_found"),
        }
        by_principal = await h.notify.BreachImpact(_with(window(now), principal=f"key:{other}"), metadata=OPERATOR)
        assert [(t.tenant_id, list(t.subject_ids)) for t in by_principal.tenants] == [(a, [a3.subject_id])]
        # Outside the window the vault lists nothing, even for a tenant the log names.
        later = _with(window(now + timedelta(days=1)), credential_id=leaked)
        assert (await h.notify.BreachImpact(later, metadata=OPERATOR)).tenants == []

        # With the vault down, the tenants are still listed, with the reason their subjects are missing; after
        # the first tenant finds the vault unreachable, the others do not each ask it (and wait out its timeout).
        assert vault.harness is not None
        await vault.harness.app.stop(0)
        asked = count_vault_lookups(h)
        answer = await h.notify.BreachImpact(_with(window(now), credential_id=leaked), metadata=OPERATOR)
        assert {(t.tenant_id, len(t.subject_ids), t.subjects_unavailable_reason) for t in answer.tenants} == {
            (a, 0, "vault_unavailable"),
            (b, 0, "vault_unavailable"),
            (absent, 0, "vault_unavailable"),
        }
        assert len(asked) == 1
    finally:
        await vault.close()


def count_vault_lookups(h: NotifyHarness) -> list[str]:
    """The tenants notify asks the vault about from now on (the real client, observed)."""
    assert h.app.breaches is not None and h.app.breaches.touched is not None
    client, asked = h.app.breaches.touched, []
    real = client.touched_subjects

    async def observed(tenant_id: str, *args: Any) -> list[str]:
        asked.append(tenant_id)
        return await real(tenant_id, *args)

    client.touched_subjects = observed  # type: ignore[method-assign]
    return asked


def _with(request: pb.BreachImpactRequest, **fields: str) -> pb.BreachImpactRequest:
    for name, value in fields.items():
        setattr(request, name, value)
    return request
