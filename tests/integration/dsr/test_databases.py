"""dsr on SQLite and PostgreSQL: a request end to end, concurrent submissions keeping one unbroken evidence chain
per tenant (the chain head is serialised per tenant), and the idempotency key's unique constraint."""

from __future__ import annotations

import asyncio

from steward.dsr.v1 import dsr_pb2 as pb

from tests.integration.dsr.support import DsrStack, submit, wait_state
from tests.integration.vault.helpers import canary_email
from tests.plugins.infra import NatsServer
from tests.plugins.stack import DsrFactory, VaultFactory


async def test_requests_and_their_evidence_chain_on_each_database(
    database_url: str, nats_server: NatsServer, vault_factory: VaultFactory, dsr_factory: DsrFactory
) -> None:
    vault = await vault_factory(nats_url=nats_server.url, nats_options={"outbox_poll_s": 0.05})
    dsr = await dsr_factory(vault=vault, nats_url=nats_server.url, database_url=database_url)
    stack = DsrStack(vault, dsr, nats_server.url, await vault.new_tenant())
    email, _ = await stack.new_lead(notes=1)
    deletion = await submit(stack, pb.REQUEST_TYPE_DELETION, email=email)
    await wait_state(stack, deletion.request_id, pb.REQUEST_STATE_COMPLETED)

    # Twelve submissions at once (subjects unknown to the vault: each completes at once with two entries).
    answers = await asyncio.gather(
        *(submit(stack, pb.REQUEST_TYPE_ACCESS, email=canary_email(), idempotency_key=f"k-{i % 6}") for i in range(12))
    )
    assert len({a.request_id for a in answers}) == 6  # six keys, six requests: a replay never makes a second one
    seqs: list[int] = []
    for request_id in {a.request_id for a in answers}:
        report = await dsr.dsr.VerifyEvidence(pb.VerifyEvidenceRequest(request_id=request_id), metadata=stack.md())
        assert report.valid, report.failure
        evidence = await dsr.dsr.GetEvidence(pb.GetEvidenceRequest(request_id=request_id), metadata=stack.md())
        assert [e.kind for e in evidence.entries] == ["request.received", "request.completed"]
        seqs += [e.seq for e in evidence.entries]
    # The deletion's three entries, then two per request: one chain, no gap, no seq used twice.
    assert sorted(seqs) == list(range(4, 4 + 12))
