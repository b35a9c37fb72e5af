"""Evidence verifies offline with the public key alone, and one changed byte anywhere fails it."""

from __future__ import annotations

import base64
import dataclasses

from steward.dsr.v1 import dsr_pb2 as pb

from services.dsr.evidence import EntryView, verify_entries
from tests.integration.dsr.support import DsrStack, submit, wait_state


def _views(answer: pb.GetEvidenceResponse) -> list[EntryView]:
    return [EntryView.of_message(e) for e in answer.entries]


async def test_evidence_verifies_offline_and_one_changed_byte_fails(stack: DsrStack) -> None:
    email, _ = await stack.new_lead(notes=1)
    request = await submit(stack, pb.REQUEST_TYPE_DELETION, email=email)
    await wait_state(stack, request.request_id, pb.REQUEST_STATE_COMPLETED)
    answer = await stack.dsr.dsr.GetEvidence(pb.GetEvidenceRequest(request_id=request.request_id), metadata=stack.md())
    public_key = base64.b64decode(answer.public_key)
    assert len(public_key) == 32 and answer.key_version == 1
    entries = _views(answer)
    assert [e.kind for e in entries] == ["request.received", "task.requested", "request.completed"]
    assert [e.seq for e in entries] == [1, 2, 3]
    # PII-free: the subject's email appears nowhere in the evidence.
    assert all(email not in e.facts_json for e in entries)

    assert verify_entries(entries, public_key).valid  # no OpenBao, no database: the key and the entries only
    server = await stack.dsr.dsr.VerifyEvidence(
        pb.VerifyEvidenceRequest(request_id=request.request_id), metadata=stack.md()
    )
    assert (server.valid, server.entries_checked) == (True, 3)

    tampered_facts = entries[2].facts_json.replace('"records_erased":2', '"records_erased":3')
    assert tampered_facts != entries[2].facts_json
    cases = {
        "one byte of the facts": dataclasses.replace(entries[2], facts_json=tampered_facts),
        "the time": dataclasses.replace(
            entries[1], at=entries[1].at.replace(microsecond=(entries[1].at.microsecond + 1) % 10**6)
        ),
        # One hex digit changed (always: a link that already began with "f" made this case a no-op 1 time in 16).
        "the link": dataclasses.replace(
            entries[1], prev_hash=("e" if entries[1].prev_hash[0] == "f" else "f") + entries[1].prev_hash[1:]
        ),
    }
    for what, changed in cases.items():
        forged = [changed if e.seq == changed.seq else e for e in entries]
        report = verify_entries(forged, public_key)
        assert not report.valid and report.failed_seq == changed.seq, what
    # A recomputed hash does not help a forger: the signature no longer matches it.
    from services.dsr.evidence import compute_hash

    forged_entry = dataclasses.replace(entries[2], facts_json=tampered_facts)
    forged_entry = dataclasses.replace(
        forged_entry,
        entry_hash=compute_hash(
            stack.tenant,
            3,
            forged_entry.request_id,
            forged_entry.kind,
            tampered_facts,
            forged_entry.at,
            forged_entry.prev_hash,
        ),
    )
    assert verify_entries([*entries[:2], forged_entry], public_key).failure == "bad_signature"
    # One changed byte of the signature itself.
    raw = bytearray(base64.b64decode(entries[0].signature.rsplit(":", 1)[1]))
    raw[0] ^= 1
    bad_signature = dataclasses.replace(entries[0], signature="vault:v1:" + base64.b64encode(bytes(raw)).decode())
    assert verify_entries([bad_signature, *entries[1:]], public_key).failure == "bad_signature"
    # Another key (another dsr's) verifies nothing.
    assert not verify_entries(entries, bytes(32)).valid


async def test_a_tampered_stored_entry_fails_server_side_verification(stack: DsrStack) -> None:
    email, _ = await stack.new_lead(notes=0)
    request = await submit(stack, pb.REQUEST_TYPE_ACCESS, email=email)
    await wait_state(stack, request.request_id, pb.REQUEST_STATE_COMPLETED)

    from sqlalchemy import update

    from services.dsr.models import EvidenceRow

    def tamper(session: object) -> None:
        session.execute(  # type: ignore[attr-defined]
            update(EvidenceRow)
            .where(EvidenceRow.request_id == request.request_id, EvidenceRow.kind == "request.received")
            .values(facts_json=EvidenceRow.facts_json + " ")
        )

    await stack.dsr.app.db.run(tamper)
    report = await stack.dsr.dsr.VerifyEvidence(
        pb.VerifyEvidenceRequest(request_id=request.request_id), metadata=stack.md()
    )
    assert (report.valid, report.failure) == (False, "hash_mismatch")
