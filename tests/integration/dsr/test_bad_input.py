"""Bad input gets a clear status, a stable reason and no customer data in the message."""

from __future__ import annotations

import uuid

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from steward.dsr.v1 import dsr_pb2 as pb

from services.chassis.errors import Reason
from tests.integration.dsr.support import DsrStack, expect_refusal, submit
from tests.integration.vault.helpers import canary_email

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def test_submissions_that_cannot_be_a_request_are_refused_with_a_reason(stack: DsrStack) -> None:
    send = stack.dsr.dsr.SubmitRequest
    email = canary_email()
    cases = [
        (pb.SubmitRequestRequest(subject=pb.SubjectIdentifier(email=email)), Reason.UNKNOWN_REQUEST_TYPE, "type"),
        (
            pb.SubmitRequestRequest(type=99, subject=pb.SubjectIdentifier(email=email)),
            Reason.UNKNOWN_REQUEST_TYPE,
            "type",
        ),  # type: ignore[arg-type]
        (pb.SubmitRequestRequest(type=pb.REQUEST_TYPE_ACCESS), Reason.IDENTIFIER_REQUIRED, "subject.email"),
        (
            pb.SubmitRequestRequest(type=pb.REQUEST_TYPE_ACCESS, subject=pb.SubjectIdentifier(email="")),
            Reason.IDENTIFIER_REQUIRED,
            "empty",
        ),
        (
            pb.SubmitRequestRequest(type=pb.REQUEST_TYPE_ACCESS, subject=pb.SubjectIdentifier(email="not-an-email")),
            Reason.MALFORMED_IDENTIFIER,
            "not an email address",
        ),
        (
            pb.SubmitRequestRequest(type=pb.REQUEST_TYPE_ACCESS, subject=pb.SubjectIdentifier(phone="call me")),
            Reason.MALFORMED_IDENTIFIER,
            "not a phone number",
        ),
        (
            pb.SubmitRequestRequest(
                type=pb.REQUEST_TYPE_ACCESS, subject=pb.SubjectIdentifier(email=email), channel="jane@example.org web"
            ),
            Reason.INVALID_ARGUMENT,
            "channel",
        ),
        (  # found by the system suite's fuzz: a received_at past year 9999 was INTERNAL
            pb.SubmitRequestRequest(
                type=pb.REQUEST_TYPE_ACCESS,
                subject=pb.SubjectIdentifier(email=email),
                received_at=Timestamp(seconds=2**62),
            ),
            Reason.INVALID_ARGUMENT,
            "received_at is not a valid timestamp",
        ),
    ]
    for request, reason, needle in cases:
        message = await expect_refusal(send(request, metadata=stack.md()), INVALID, reason, needle)
        assert email not in message and "not-an-email" not in message and "call me" not in message


async def test_another_tenants_request_answers_exactly_like_a_nonexistent_one(stack: DsrStack) -> None:
    email, _ = await stack.new_lead(notes=0)
    request = await submit(stack, pb.REQUEST_TYPE_OPT_OUT, email=email)
    other = await stack.vault.new_tenant()
    answers = []
    for request_id in (request.request_id, str(uuid.uuid4())):
        for call in (
            stack.dsr.dsr.GetRequest(pb.GetRequestRequest(request_id=request_id), metadata=stack.md(other)),
            stack.dsr.dsr.GetEvidence(pb.GetEvidenceRequest(request_id=request_id), metadata=stack.md(other)),
            stack.dsr.dsr.CancelRequest(pb.CancelRequestRequest(request_id=request_id), metadata=stack.md(other)),
        ):
            answers.append(await expect_refusal(call, grpc.StatusCode.NOT_FOUND, Reason.DSR_REQUEST_NOT_FOUND))
    assert answers[:3] == answers[3:]
    await expect_refusal(
        stack.dsr.dsr.GetRequest(pb.GetRequestRequest(request_id="bad id\x00"), metadata=stack.md()),
        INVALID,
        Reason.MALFORMED_ID,
        "request_id",
    )


async def test_a_replayed_idempotency_key_returns_the_same_request(stack: DsrStack) -> None:
    email, _ = await stack.new_lead(notes=0)
    first = await stack.dsr.dsr.SubmitRequest(
        pb.SubmitRequestRequest(
            type=pb.REQUEST_TYPE_OPT_OUT, subject=pb.SubjectIdentifier(email=email), idempotency_key="crm-ticket-1"
        ),
        metadata=stack.md(),
    )
    again = await stack.dsr.dsr.SubmitRequest(
        pb.SubmitRequestRequest(
            type=pb.REQUEST_TYPE_OPT_OUT, subject=pb.SubjectIdentifier(email=email), idempotency_key="crm-ticket-1"
        ),
        metadata=stack.md(),
    )
    assert not first.replayed and again.replayed
    assert again.request.request_id == first.request.request_id
    listed = await stack.dsr.dsr.ListRequests(pb.ListRequestsRequest(), metadata=stack.md())
    assert [r.request_id for r in listed.requests] == [first.request.request_id]
    # The same key in another tenant is another request.
    other = await stack.vault.new_tenant()
    theirs = await stack.dsr.dsr.SubmitRequest(
        pb.SubmitRequestRequest(
            type=pb.REQUEST_TYPE_OPT_OUT, subject=pb.SubjectIdentifier(email=email), idempotency_key="crm-ticket-1"
        ),
        metadata=stack.md(other),
    )
    assert theirs.request.request_id != first.request.request_id and not theirs.replayed


async def test_state_changes_that_do_not_apply_are_refused_with_the_current_state(stack: DsrStack) -> None:
    done = await submit(stack, pb.REQUEST_TYPE_ACCESS, email=canary_email())  # no such subject: COMPLETED at once
    assert done.state == pb.REQUEST_STATE_COMPLETED
    rid = done.request_id
    for call, action in (
        (stack.dsr.dsr.ApproveRequest(pb.ApproveRequestRequest(request_id=rid), metadata=stack.md()), "approve"),
        (stack.dsr.dsr.CancelRequest(pb.CancelRequestRequest(request_id=rid), metadata=stack.md()), "cancel"),
        (
            stack.dsr.dsr.RejectRequest(
                pb.RejectRequestRequest(request_id=rid, reason=pb.REJECTION_REASON_EXCESSIVE), metadata=stack.md()
            ),
            "reject",
        ),
    ):
        message = await expect_refusal(
            call, grpc.StatusCode.FAILED_PRECONDITION, Reason.DSR_INVALID_TRANSITION, "COMPLETED"
        )
        assert action in message
    await expect_refusal(
        stack.dsr.dsr.RejectRequest(pb.RejectRequestRequest(request_id=rid), metadata=stack.md()),
        INVALID,
        Reason.REASON_REQUIRED,
    )
    await expect_refusal(
        stack.dsr.dsr.SetPolicy(
            pb.SetPolicyRequest(policy=pb.TenantPolicy(minor_age_threshold=13)), metadata=stack.md()
        ),
        INVALID,
        Reason.INVALID_ARGUMENT,
        "16",
    )
    await expect_refusal(
        stack.dsr.dsr.RunRetentionSweep(pb.RunRetentionSweepRequest(dry_run=True), metadata=stack.md()),
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.PERMISSION_DENIED,
        "only operators",
    )


async def test_rejecting_and_cancelling_requests_that_wait_for_approval(stack: DsrStack) -> None:
    await stack.dsr.dsr.SetPolicy(
        pb.SetPolicyRequest(policy=pb.TenantPolicy(approval_required=[pb.REQUEST_TYPE_ACCESS])), metadata=stack.md()
    )
    email, _ = await stack.new_lead(notes=0)
    one = await submit(stack, pb.REQUEST_TYPE_ACCESS, email=email)
    two = await submit(stack, pb.REQUEST_TYPE_ACCESS, email=email)
    rejected = await stack.dsr.dsr.RejectRequest(
        pb.RejectRequestRequest(request_id=one.request_id, reason=pb.REJECTION_REASON_IDENTITY_NOT_VERIFIED),
        metadata=stack.md(),
    )
    assert (rejected.request.state, rejected.request.reason_code) == (
        pb.REQUEST_STATE_REJECTED,
        "IDENTITY_NOT_VERIFIED",
    )
    cancelled = await stack.dsr.dsr.CancelRequest(
        pb.CancelRequestRequest(request_id=two.request_id), metadata=stack.md()
    )
    assert cancelled.request.state == pb.REQUEST_STATE_CANCELLED
