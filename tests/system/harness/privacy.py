"""The dsr, notify and tenant-export flows of the load, and the accounting of what they were promised.

Everything goes through the gateway with the demo tenant's API key, as a client app would:

- :class:`DsrFlow` submits data-subject requests under an idempotency key: ACCESS and OPT_OUT for subjects the
  write flow created (by their ``external_id``), DELETION for a person it stores itself (a lead with an email
  address and a note), so erasing it never touches what the write ledger expects to read back.
- :class:`NoticeFlow` sends notices with ``SendToSubject``: transactional (service lane) and marketing, to people
  who consented (``RecordConsent``) and to people who did not, each under an idempotency key.
- :class:`ExportFlow` runs one tenant-wide export per phase (the quick campaign: only under the vault's kill) —
  ``ExportTenant`` with a tenant admin key made by ``steward apikey create`` — and checks it offline as
  ``steward tenant export --verify`` does.

:func:`account_privacy` then checks, for the operations of a phase: every acknowledged request reached one
terminal state, once, with evidence that verifies (``VerifyEvidence`` and, offline, each entry's Ed25519
signature and its link to the previous entry); one request per idempotency key; a deleted person's records and
identifier are gone; every acknowledged delivery reached a final status — the one its lane and consent call
for — and the SMTP sink holds exactly the mail that status implies, one message per delivery; operations the
client saw fail are replayed with their own key and must come back once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import json
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from grpc import aio
from steward.dsr.v1 import dsr_pb2, dsr_pb2_grpc
from steward.notify.v1 import notify_pb2, notify_pb2_grpc
from steward.vault.v1 import vault_pb2 as pb
from steward.vault.v1 import vault_pb2_grpc

from services.cli.ops.tenant_export import MANIFEST_FILE, chunk_path, verify_export_dir
from services.client import StewardClient
from tests.plugins.waiting import eventually
from tests.system.harness.stack import SystemStack

__all__ = [
    "DsrFlow",
    "ExportFlow",
    "NoticeFlow",
    "PrivacyAccounting",
    "PrivacyLedger",
    "account_privacy",
    "mail_by_recipient",
    "stubs",
]

T = TypeVar("T")

TERMINAL = {
    dsr_pb2.REQUEST_STATE_COMPLETED,
    dsr_pb2.REQUEST_STATE_REJECTED,
    dsr_pb2.REQUEST_STATE_CANCELLED,
    dsr_pb2.REQUEST_STATE_FAILED,
}
FINAL_DELIVERY = {
    notify_pb2.DELIVERY_STATUS_SENT,
    notify_pb2.DELIVERY_STATUS_DELIVERED,
    notify_pb2.DELIVERY_STATUS_READ,
    notify_pb2.DELIVERY_STATUS_FAILED,
    notify_pb2.DELIVERY_STATUS_SUPPRESSED,
}
SENT_OR_LATER = {notify_pb2.DELIVERY_STATUS_SENT, notify_pb2.DELIVERY_STATUS_DELIVERED, notify_pb2.DELIVERY_STATUS_READ}
PURPOSE = "newsletter"


def _status(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        return str(exc.code().name)
    return type(exc).__name__


# -- what the flows did --------------------------------------------------------------------------------------------


@dataclass
class Person:
    """A data subject the privacy flows stored themselves, with an email address (a canary: it must never leave
    the vault's memory and the SMTP sink)."""

    subject_id: str
    email: str
    record_ids: list[str]
    consented: bool = False


@dataclass
class DsrAck:
    """An acknowledged SubmitRequest."""

    request_id: str
    key: str
    type: int
    phase: str
    person: Person | None = None


@dataclass
class NoticeAck:
    """An acknowledged SendToSubject and the status it must end in (SENT, or SUPPRESSED without consent)."""

    delivery_id: str
    key: str
    lane: int
    person: Person
    phase: str
    expect_sent: bool


@dataclass
class PendingCall:
    """A keyed call whose caller saw a failure: it may have committed. Replayed with its key in accounting."""

    key: str
    request: Any
    phase: str
    status: str
    person: Person | None = None
    expect_sent: bool = True


@dataclass
class PrivacyLedger:
    """What the dsr, notify and export flows did, next to the write ledger."""

    run: str
    sequence: int = 0
    requests: list[DsrAck] = field(default_factory=list)
    deliveries: list[NoticeAck] = field(default_factory=list)
    pending_requests: list[PendingCall] = field(default_factory=list)
    pending_sends: list[PendingCall] = field(default_factory=list)
    people: list[Person] = field(default_factory=list)
    targeted: set[tuple[str, int]] = field(default_factory=set)
    exports: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    canaries: list[str] = field(default_factory=list)

    def next_key(self, prefix: str) -> str:
        """An idempotency key no other operation of this run uses."""
        self.sequence += 1
        return f"{self.run}-{prefix}{self.sequence}"


def stubs(client: StewardClient) -> tuple[dsr_pb2_grpc.DsrServiceStub, notify_pb2_grpc.NotifyServiceStub]:
    """dsr's and notify's stubs on the client's current channel (the gateway forwards both)."""
    channel = client.channel
    return dsr_pb2_grpc.DsrServiceStub(channel), notify_pb2_grpc.NotifyServiceStub(channel)


async def new_person(client: StewardClient, privacy: PrivacyLedger, *, consent: bool) -> Person:
    """Store a lead with a fresh email address and a note about it; with ``consent``, record marketing consent."""
    address = f"cnry{uuid.uuid4().hex[:20]}@example.com"
    name = f"cnryname{uuid.uuid4().hex[:16]}"
    privacy.canaries += [address, address.split("@")[0], name]
    lead = pb.NewRecord(kind=pb.RECORD_KIND_LEAD_CONTACT, identifiers=pb.SubjectIdentifiers(email=address))
    lead.data.update({"name": name, "email": address})
    stored = await client.put_record(lead)
    note = pb.NewRecord(kind=pb.RECORD_KIND_NOTE, subject_id=stored.subject_id)
    note.data.update({"text": f"called {name}"})
    noted = await client.put_record(note)
    person = Person(stored.subject_id, address, [stored.id, noted.id])
    if consent:
        _dsr, notify = stubs(client)
        request = notify_pb2.RecordConsentRequest(
            subject_id=person.subject_id,
            channel=notify_pb2.CHANNEL_EMAIL,
            purpose=PURPOSE,
            source="web_form",
            wording_version="nl-2026-01",
        )
        await client.call(notify.RecordConsent, request, idempotent=True)
        person.consented = True
    return person


# -- flows ---------------------------------------------------------------------------------------------------------


@dataclass
class DsrFlow:
    """SubmitRequest: ACCESS / OPT_OUT for write-flow subjects, DELETION for a person of its own."""

    privacy: PrivacyLedger
    workers: int = 1
    name: str = "dsr"

    async def step(self, load: Any) -> None:
        """One request; acknowledged -> ``privacy.requests``, failed -> ``pending_requests``."""
        ledger, rng, privacy = load.ledger, load.rng, self.privacy
        phase = ledger.phase
        kind = rng.choice([dsr_pb2.REQUEST_TYPE_ACCESS, dsr_pb2.REQUEST_TYPE_OPT_OUT, dsr_pb2.REQUEST_TYPE_DELETION])
        person: Person | None = None
        if kind == dsr_pb2.REQUEST_TYPE_DELETION:
            try:
                person = await new_person(load.client, privacy, consent=False)
            except (TimeoutError, grpc.RpcError) as exc:
                ledger.outcome("dsr-subject", _status(exc))
                return
            subject = dsr_pb2.SubjectIdentifier(email=person.email)
        else:
            leads = [
                ack
                for ack in ledger.acks.values()
                if ack.kind == pb.RECORD_KIND_LEAD_CONTACT and (ack.subject_id, kind) not in privacy.targeted
            ]
            if not leads:
                await asyncio.sleep(0.05)  # nothing to ask about yet: the writers have not stored a lead
                return
            ack = rng.choice(leads)
            privacy.targeted.add((ack.subject_id, kind))
            subject = dsr_pb2.SubjectIdentifier(external_id=ack.marker)
        key = privacy.next_key("d")
        request = dsr_pb2.SubmitRequestRequest(
            type=kind,
            subject=subject,
            channel="web_form",
            verification=dsr_pb2.IdentityVerification(method="email_link", verified_by="agent-7"),
            idempotency_key=key,
        )
        dsr, _notify = stubs(load.client)
        try:
            answer = await load.client.call(dsr.SubmitRequest, request, idempotent=True)
        except (TimeoutError, grpc.RpcError) as exc:
            ledger.outcome(self.name, _status(exc))
            privacy.pending_requests.append(PendingCall(key, request, phase, _status(exc), person))
            return
        privacy.requests.append(DsrAck(answer.request.request_id, key, kind, phase, person))
        ledger.outcome(self.name, "OK")


@dataclass
class NoticeFlow:
    """SendToSubject: transactional, marketing with consent, marketing without it; people reused a few times."""

    privacy: PrivacyLedger
    workers: int = 1
    name: str = "notice"

    async def step(self, load: Any) -> None:
        """One send; acknowledged -> ``privacy.deliveries``, failed -> ``pending_sends``."""
        ledger, rng, privacy = load.ledger, load.rng, self.privacy
        phase = ledger.phase
        pool = privacy.people
        if len(pool) < 4 or rng.random() < 0.25:
            try:
                pool.append(await new_person(load.client, privacy, consent=rng.random() < 0.5))
            except (TimeoutError, grpc.RpcError) as exc:
                ledger.outcome("notice-subject", _status(exc))
                return
        person = rng.choice(pool[-12:])
        marketing = rng.random() < 0.5
        key = privacy.next_key("n")
        name = f"cnryvar{uuid.uuid4().hex[:16]}"
        privacy.canaries.append(name)
        request = notify_pb2.SendToSubjectRequest(
            subject_id=person.subject_id,
            template="newsletter" if marketing else "account_update",
            locale="en",
            channel=notify_pb2.CHANNEL_EMAIL,
            lane=notify_pb2.LANE_MARKETING if marketing else notify_pb2.LANE_SERVICE,
            variables={"name": name, "detail": "your order shipped", "business": "Acme", "headline": "News"},
            idempotency_key=key,
            purpose=PURPOSE if marketing else "",
        )
        expect_sent = not marketing or person.consented
        _dsr, notify = stubs(load.client)
        try:
            answer = await load.client.call(notify.SendToSubject, request, idempotent=True)
        except (TimeoutError, grpc.RpcError) as exc:
            ledger.outcome(self.name, _status(exc))
            privacy.pending_sends.append(PendingCall(key, request, phase, _status(exc), person, expect_sent))
            return
        privacy.deliveries.append(NoticeAck(answer.delivery.delivery_id, key, request.lane, person, phase, expect_sent))
        ledger.outcome(self.name, "OK")


@dataclass
class ExportFlow:
    """One tenant-wide export per phase, with a tenant admin key, verified offline like the CLI's ``--verify``."""

    stack: SystemStack
    privacy: PrivacyLedger
    phases: tuple[str, ...] | None = None
    workers: int = 1
    name: str = "export"
    admin_key: str = ""

    async def step(self, load: Any) -> None:
        """Export once in each phase (of ``phases``; None: every phase); otherwise idle until the load stops."""
        phase = load.ledger.phase
        if self.privacy.exports.get(phase) or (self.phases is not None and phase not in self.phases):
            await asyncio.sleep(0.2)  # one export per phase is enough; the worker idles until the phase ends
            return
        if not self.admin_key:
            self.admin_key = await asyncio.to_thread(admin_key, self.stack, "sysuite-export")
        folder = self.stack.root / "exports" / f"{phase.replace(' ', '_')}-{uuid.uuid4().hex[:6]}"
        try:
            problems = await export_tenant(self.stack, self.admin_key, folder)
        except (TimeoutError, grpc.RpcError) as exc:
            load.ledger.outcome(self.name, _status(exc))
            await asyncio.sleep(0.5)  # try again shortly: the fault may still be on
            return
        self.privacy.exports[phase] = problems or ["ok"]
        load.ledger.outcome(self.name, "OK" if not problems else "UNVERIFIED")


def admin_key(stack: SystemStack, name: str) -> str:
    """A ``keys:manage`` key of the demo tenant, issued as an operator would: ``steward apikey create``."""
    tenant = json.loads((stack.home / "demo.json").read_text())["tenant_id"]
    steward = str(Path(sys.executable).with_name("steward"))
    arguments = ["--home", str(stack.home), "--tenant", tenant, "--name", name, "--scope", "keys:manage", "--json"]
    out = subprocess.run(
        [steward, "apikey", "create", *arguments], capture_output=True, text=True, check=True, timeout=120
    )
    return str(json.loads(out.stdout)["token"])


async def export_tenant(stack: SystemStack, key: str, folder: Path) -> list[str]:
    """Stream ``ExportTenant`` into ``folder`` (the CLI's layout) and verify it offline; returns the problems."""
    items: list[pb.ExportTenantResponse] = []
    credentials = grpc.ssl_channel_credentials(stack.ca_file.read_bytes())
    async with aio.secure_channel(stack.gateway_address, credentials) as channel:
        stub = vault_pb2_grpc.VaultServiceStub(channel)
        stream = stub.ExportTenant(
            pb.ExportTenantRequest(chunk_records=500), metadata=(("authorization", f"Bearer {key}"),), timeout=120
        )
        items += [item async for item in stream]
    return await asyncio.to_thread(_store_and_verify, folder, items)


def _store_and_verify(folder: Path, items: list[pb.ExportTenantResponse]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for item in items:
        if item.WhichOneof("item") == "chunk":
            chunk_path(folder, item.chunk.seq).write_bytes(item.chunk.body)
        else:
            (folder / MANIFEST_FILE).write_bytes(item.manifest.SerializeToString())
    return verify_export_dir(folder).problems


# -- accounting ----------------------------------------------------------------------------------------------------


@dataclass
class PrivacyAccounting:
    """What the privacy accounting found (ids are request ids, delivery ids or idempotency keys)."""

    requests_checked: int = 0
    deliveries_checked: int = 0
    not_terminal: dict[str, str] = field(default_factory=dict)
    terminal_twice: list[str] = field(default_factory=list)
    evidence_invalid: dict[str, str] = field(default_factory=dict)
    requests_duplicated: list[str] = field(default_factory=list)
    erased_still_there: list[str] = field(default_factory=list)
    not_final: dict[str, str] = field(default_factory=dict)
    wrong_status: dict[str, str] = field(default_factory=dict)
    deliveries_duplicated: list[str] = field(default_factory=list)
    mail_missing: list[str] = field(default_factory=list)
    mail_duplicated: list[str] = field(default_factory=list)
    mail_unwanted: list[str] = field(default_factory=list)
    unreconciled: dict[str, str] = field(default_factory=dict)
    exports_failed: dict[str, list[str]] = field(default_factory=dict)
    states: Counter[str] = field(default_factory=Counter)
    delivery_states: Counter[str] = field(default_factory=Counter)
    reconciled: int = 0

    def problems(self) -> list[tuple[str, object]]:
        """Each non-empty finding, labelled (empty = every promise held)."""
        found = [
            ("DSRs never terminal", self.not_terminal),
            ("DSRs terminal more than once", self.terminal_twice),
            ("DSR evidence not verifying", self.evidence_invalid),
            ("DSRs stored twice for one key", self.requests_duplicated),
            ("erased subjects still readable", self.erased_still_there),
            ("deliveries never final", self.not_final),
            ("deliveries in the wrong final status", self.wrong_status),
            ("deliveries stored twice for one key", self.deliveries_duplicated),
            ("sent deliveries without mail", self.mail_missing),
            ("deliveries mailed more than once", self.mail_duplicated),
            ("mail for a delivery that was not sent", self.mail_unwanted),
            ("dsr/notify calls not reconciled", self.unreconciled),
            ("tenant exports failing", self.exports_failed),
        ]
        return [(label, items) for label, items in found if items]

    @property
    def clean(self) -> bool:
        """True when every promise held."""
        return not self.problems()


async def reconcile_privacy(client: StewardClient, privacy: PrivacyLedger, into: PrivacyAccounting) -> None:
    """Replay each failed SubmitRequest / SendToSubject with its own key; the answer joins the ledger."""
    dsr, notify = stubs(client)
    pending, privacy.pending_requests = privacy.pending_requests, []
    for call in pending:
        try:
            answer = await client.call(dsr.SubmitRequest, call.request, idempotent=True)
        except grpc.RpcError as exc:
            into.unreconciled[call.key] = f"{call.status} then {_status(exc)}: {exc.details()}"
            continue
        into.reconciled += 1
        privacy.requests.append(DsrAck(answer.request.request_id, call.key, call.request.type, call.phase, call.person))
    sends, privacy.pending_sends = privacy.pending_sends, []
    for call in sends:
        try:
            sent = await client.call(notify.SendToSubject, call.request, idempotent=True)
        except grpc.RpcError as exc:
            into.unreconciled[call.key] = f"{call.status} then {_status(exc)}: {exc.details()}"
            continue
        into.reconciled += 1
        assert call.person is not None
        privacy.deliveries.append(
            NoticeAck(sent.delivery.delivery_id, call.key, call.request.lane, call.person, call.phase, call.expect_sent)
        )


def _verify_offline(evidence: dsr_pb2.GetEvidenceResponse) -> str:
    """Each entry's Ed25519 signature over its hash, and links between neighbours; "" when all hold."""
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(evidence.public_key))
    except ValueError:
        return "no usable public key"
    previous: dsr_pb2.EvidenceEntry | None = None
    for entry in evidence.entries:
        parts = entry.signature.split(":")
        try:
            public.verify(base64.b64decode(parts[-1]), entry.entry_hash.encode("ascii"))
        except (InvalidSignature, ValueError):
            return f"bad signature at seq {entry.seq}"
        if previous is not None and previous.seq + 1 == entry.seq and entry.prev_hash != previous.entry_hash:
            return f"broken link at seq {entry.seq}"
        previous = entry
    return ""


async def _settled(predicate: Callable[[], Awaitable[bool]], settle_s: float, what: str) -> None:
    """Wait (the one ``eventually``) until ``predicate`` holds or ``settle_s`` passes; the caller then records what
    it saw last as a violation instead of failing at once, so one report lists every problem."""
    with contextlib.suppress(AssertionError):
        await eventually(predicate, settle_s, what=what, interval_s=0.25)


async def _check_request(client: StewardClient, ack: DsrAck, into: PrivacyAccounting, settle_s: float) -> None:
    dsr, _notify = stubs(client)
    latest: list[dsr_pb2.DsrRequest] = []

    async def terminal() -> bool:
        got = await client.call(dsr.GetRequest, dsr_pb2.GetRequestRequest(request_id=ack.request_id), idempotent=True)
        latest[:] = [got.request]
        return got.request.state in TERMINAL

    await _settled(terminal, settle_s, f"request {ack.request_id} terminal")
    request = latest[0]
    into.states[dsr_pb2.RequestState.Name(request.state)] += 1
    if request.state not in TERMINAL:
        into.not_terminal[ack.request_id] = dsr_pb2.RequestState.Name(request.state)
        return
    terminal_entries = [entry for entry in request.timeline if entry.state in TERMINAL]
    if len(terminal_entries) != 1:
        into.terminal_twice.append(ack.request_id)
    verified = await client.call(
        dsr.VerifyEvidence, dsr_pb2.VerifyEvidenceRequest(request_id=ack.request_id), idempotent=True
    )
    evidence = await client.call(
        dsr.GetEvidence, dsr_pb2.GetEvidenceRequest(request_id=ack.request_id), idempotent=True
    )
    offline = _verify_offline(evidence)
    completed = [entry for entry in evidence.entries if entry.kind == "request.completed"]
    if not verified.valid or offline or not evidence.entries:
        into.evidence_invalid[ack.request_id] = verified.failure or offline or "no evidence"
    elif request.state == dsr_pb2.REQUEST_STATE_COMPLETED and len(completed) != 1:
        into.terminal_twice.append(ack.request_id)
    if ack.person is not None and request.state == dsr_pb2.REQUEST_STATE_COMPLETED:
        await _check_erased(client, ack.person, into)


async def _check_erased(client: StewardClient, person: Person, into: PrivacyAccounting) -> None:
    """A completed DELETION: no record of the person reads back and its email resolves to nothing."""
    for record_id in person.record_ids:
        try:
            await client.get_record(record_id)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                continue
            raise
        into.erased_still_there.append(record_id)
    try:
        request = pb.ResolveSubjectRequest(email=person.email)
        await client.call(client.vault.ResolveSubject, request, idempotent=True)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return
        raise
    into.erased_still_there.append(person.subject_id)


async def _list_requests(client: StewardClient) -> list[dsr_pb2.DsrRequest]:
    dsr, _notify = stubs(client)
    found, token = [], ""
    while True:
        page = await client.call(
            dsr.ListRequests, dsr_pb2.ListRequestsRequest(page_size=500, page_token=token), idempotent=True
        )
        found += list(page.requests)
        token = page.next_page_token
        if not token:
            return found


async def _deliveries_of(client: StewardClient, subject_id: str) -> list[notify_pb2.Delivery]:
    _dsr, notify = stubs(client)
    found, token = [], ""
    while True:
        request = notify_pb2.ListDeliveriesRequest(subject_id=subject_id, page_size=100, page_token=token)
        page = await client.call(notify.ListDeliveries, request, idempotent=True)
        found += list(page.deliveries)
        token = page.next_page_token
        if not token:
            return found


def mail_by_recipient(stack: SystemStack) -> dict[str, list[EmailMessage]]:
    """Every message in the SMTP sink's spool (``<home>/mail/*.eml``), by its ``To`` address."""
    mails: dict[str, list[EmailMessage]] = defaultdict(list)
    for path in sorted((stack.home / "mail").glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        mails[str(message["To"]).strip().lower()].append(message)  # type: ignore[arg-type]
    return mails


async def _check_delivery(
    client: StewardClient, ack: NoticeAck, into: PrivacyAccounting, settle_s: float
) -> notify_pb2.Delivery:
    _dsr, notify = stubs(client)
    latest: list[notify_pb2.Delivery] = []

    def is_final(delivery: notify_pb2.Delivery) -> bool:
        return delivery.status in FINAL_DELIVERY or (
            delivery.status == notify_pb2.DELIVERY_STATUS_AMBIGUOUS and ack.lane == notify_pb2.LANE_MARKETING
        )

    async def settled() -> bool:
        request = notify_pb2.GetDeliveryRequest(delivery_id=ack.delivery_id)
        latest[:] = [(await client.call(notify.GetDelivery, request, idempotent=True)).delivery]
        return is_final(latest[0])

    await _settled(settled, settle_s, f"delivery {ack.delivery_id} final")
    delivery = latest[0]
    final = is_final(delivery)
    name = notify_pb2.DeliveryStatus.Name(delivery.status)
    into.delivery_states[name] += 1
    if not final:
        into.not_final[ack.delivery_id] = name
    elif ack.expect_sent != (delivery.status in SENT_OR_LATER) and not (
        # Marketing is at most once: a send whose SMTP answer was lost (notify killed mid-send) stays AMBIGUOUS and
        # is never resent. Allowed only where sending was allowed; the mail check still refuses a second copy.
        delivery.status == notify_pb2.DELIVERY_STATUS_AMBIGUOUS and ack.expect_sent
    ):
        into.wrong_status[ack.delivery_id] = f"{name} ({delivery.reason_code}), expected sent={ack.expect_sent}"
    return delivery


async def account_privacy(
    stack: SystemStack,
    client: StewardClient,
    privacy: PrivacyLedger,
    phase: str | None,
    *,
    settle_s: float = 90,
) -> PrivacyAccounting:
    """Reconcile, then check every request and delivery of ``phase`` (None: all), the mail sink and the exports."""
    result = PrivacyAccounting()
    await reconcile_privacy(client, privacy, result)
    requests = [ack for ack in privacy.requests if phase is None or ack.phase == phase]
    deliveries = [ack for ack in privacy.deliveries if phase is None or ack.phase == phase]
    result.requests_checked, result.deliveries_checked = len(requests), len(deliveries)
    await _each(requests, lambda ack: _check_request(client, ack, result, settle_s))
    by_key: dict[str, set[str]] = defaultdict(set)
    for ack in privacy.requests:
        by_key[ack.key].add(ack.request_id)
    result.requests_duplicated += [key for key, ids in by_key.items() if len(ids) > 1]
    # One request per (subject, type) the load asked about: a second one is a submit stored twice.
    everything = await _list_requests(client)
    ours = {ack.request_id for ack in privacy.requests}
    asked = {(r.subject_id, r.type) for r in everything if r.request_id in ours and r.subject_id}
    result.requests_duplicated += [
        r.request_id for r in everything if r.request_id not in ours and (r.subject_id, r.type) in asked
    ]

    await _account_deliveries(stack, client, privacy, deliveries, result, phase=phase, settle_s=settle_s)
    for name, problems in privacy.exports.items():
        if phase is None or name == phase:
            if problems != ["ok"]:
                result.exports_failed[name] = problems
    return result


async def _account_deliveries(
    stack: SystemStack,
    client: StewardClient,
    privacy: PrivacyLedger,
    deliveries: list[NoticeAck],
    result: PrivacyAccounting,
    *,
    phase: str | None,
    settle_s: float,
) -> None:
    """Final status of each delivery, one delivery per key, and the SMTP sink: one mail per sent delivery."""
    final: dict[str, notify_pb2.Delivery] = {}

    async def check(sent: NoticeAck) -> None:
        final[sent.delivery_id] = await _check_delivery(client, sent, result, settle_s)

    await _each(deliveries, check)
    by_send_key: dict[str, set[str]] = defaultdict(set)
    for sent in privacy.deliveries:
        by_send_key[sent.key].add(sent.delivery_id)
    result.deliveries_duplicated += [key for key, ids in by_send_key.items() if len(ids) > 1]
    known = {sent.delivery_id for sent in privacy.deliveries}
    people = {sent.person.subject_id: sent.person for sent in deliveries}
    mails = mail_by_recipient(stack)
    for person in people.values():
        stored = await _deliveries_of(client, person.subject_id)
        # Deliveries of this person the load never saw acknowledged are a send stored twice for one key.
        result.deliveries_duplicated += [d.delivery_id for d in stored if d.delivery_id not in known]
        references = Counter(_message_reference(mail) for mail in mails.get(person.email, []))
        for sent in (a for a in deliveries if a.person is person):
            delivery = final[sent.delivery_id]
            copies = references.get(delivery.reference, 0) if delivery.reference else 0
            if delivery.status in SENT_OR_LATER and copies == 0:
                result.mail_missing.append(sent.delivery_id)
            elif copies > 1:
                result.mail_duplicated.append(sent.delivery_id)
            elif (
                copies
                and delivery.status not in SENT_OR_LATER
                and delivery.status != notify_pb2.DELIVERY_STATUS_AMBIGUOUS
            ):
                result.mail_unwanted.append(sent.delivery_id)
        if phase is None:
            # Mail to a person under a reference no acknowledged delivery has: a send the load never saw.
            mine = {final[a.delivery_id].reference for a in deliveries if a.person is person}
            result.mail_unwanted += [ref for ref in references if ref not in mine]


async def _each(items: Sequence[T], check: Callable[[T], Awaitable[None]], *, concurrency: int = 8) -> None:
    """Run ``check`` on every item, ``concurrency`` at a time (each may poll for up to its settle time)."""
    queue = list(items)

    async def worker() -> None:
        while queue:
            await check(queue.pop())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _message_reference(mail: EmailMessage) -> str:
    """The delivery reference a Message-ID carries (``<reference@domain>``)."""
    value = str(mail.get("Message-ID", "")).strip().strip("<>")
    return value.split("@", 1)[0]


async def consent_snapshot(stack: SystemStack, privacy: PrivacyLedger) -> dict[str, str]:
    """``{subject id: consent history and suppressions}`` of every person the notice flow stored."""
    snapshot = {}
    async with stack.client(timeout_s=10.0) as client:
        _dsr, notify = stubs(client)
        for person in privacy.people:
            answer = await client.call(
                notify.GetConsent, notify_pb2.GetConsentRequest(subject_id=person.subject_id), idempotent=True
            )
            state = [*answer.history, *answer.suppressions]
            snapshot[person.subject_id] = "|".join(item.SerializeToString(deterministic=True).hex() for item in state)
    return snapshot


async def half_written(stack: SystemStack, privacy: PrivacyLedger, *, settle_s: float = 30) -> dict[str, str]:
    """Requests the load never made (the fuzz's) that do not settle: stuck RECEIVED / IN_PROGRESS is half-written.

    A request waiting for the tenant (AWAITING_APPROVAL, after a fuzzed SetPolicy) or on a hold has settled.
    """
    settled = TERMINAL | {dsr_pb2.REQUEST_STATE_AWAITING_APPROVAL, dsr_pb2.REQUEST_STATE_BLOCKED_BY_HOLD}
    ours = {ack.request_id for ack in privacy.requests}
    stuck: dict[str, str] = {}
    async with stack.client(timeout_s=10.0) as client:

        async def none_stuck() -> bool:
            stuck.clear()
            stuck.update(
                (r.request_id, dsr_pb2.RequestState.Name(r.state))
                for r in await _list_requests(client)
                if r.request_id not in ours and r.state not in settled
            )
            return not stuck

        await _settled(none_stuck, settle_s, "requests the fuzz created settled")
    return stuck


async def dsr_policy(stack: SystemStack, policy: dsr_pb2.TenantPolicy | None = None) -> dsr_pb2.TenantPolicy:
    """The demo tenant's DSR policy; with ``policy``, set it first (the fuzz may send a valid SetPolicy)."""
    async with stack.client(timeout_s=10.0) as client:
        dsr, _notify = stubs(client)
        if policy is not None:
            await client.call(dsr.SetPolicy, dsr_pb2.SetPolicyRequest(policy=policy), idempotent=True)
        return (await client.call(dsr.GetPolicy, dsr_pb2.GetPolicyRequest(), idempotent=True)).policy
