"""Synchronous client for the OpenBao/Vault Transit engine: one key per tenant wraps that tenant's DEKs,
and one Ed25519 key signs the vault's audit checkpoints.

Callers run it in worker threads. Every method makes a known, small number of HTTP calls (``calls`` counts
them): wrap and unwrap take a whole batch in one call, so a request touching many subjects costs O(1)
Transit round trips.

Failure model:

- Transit unreachable, timing out, sealed (503), answering 5xx, rate limiting or refusing our token ->
  :class:`~services.chassis.errors.Unavailable`, recorded on the circuit breaker. While the breaker is open,
  calls fail fast with ``Unavailable`` without touching the network.
- The tenant key is gone (shredded), a ciphertext was made with a retired key version, or a ciphertext does
  not verify against its associated data -> :class:`KeyUnavailable`; the domain code decides the status.
- Anything else Transit refuses (a bug or misconfiguration on our side) -> :class:`TransitRejected`.

Nothing here logs or raises with key material, plaintext or ciphertext. The hvac client is built with
``ignore_exceptions=True`` on purpose: hvac's exceptions embed the raw response body, and the body of a
partly failed batch decrypt holds the plaintext of the items that did succeed.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hvac
import requests
from hvac.adapters import RawAdapter

from services.chassis.circuit import CircuitBreaker
from services.chassis.errors import FailedPrecondition, Reason, Unavailable
from services.chassis.ids import is_tenant_id

__all__ = [
    "DEK_BYTES",
    "UNAVAILABLE_MESSAGE",
    "KeyInfo",
    "KeyUnavailable",
    "Signature",
    "TransitClient",
    "TransitRejected",
]

log = logging.getLogger("steward.vault.transit")

UNAVAILABLE_MESSAGE = "key service (Transit) is unavailable; retry later"
DEK_BYTES = 32
KEY_TYPE = "aes256-gcm96"
SIGNING_KEY_TYPE = "ed25519"
# Statuses meaning "Transit cannot serve us right now": 401/403 (token expired or policy missing) are an
# outage from the caller's point of view, and 412 is Vault's "not yet consistent, retry".
_UNAVAILABLE_STATUSES = frozenset({401, 403, 412, 429})


class KeyUnavailable(FailedPrecondition):
    """Transit cannot decrypt (or encrypt) with the tenant key, and retrying will not change that.

    A FAILED_PRECONDITION where it is not handled more specifically (the messages name no data).

    ``cause`` is one of :attr:`KEY_MISSING`, :attr:`VERSION_RETIRED`, :attr:`DOES_NOT_VERIFY` (also sent as
    ``key_problem`` in the ErrorInfo metadata); ``failed`` holds the indexes of the batch items that failed
    (all of them when the key is gone).
    """

    KEY_MISSING = "key_missing"
    VERSION_RETIRED = "version_retired"
    DOES_NOT_VERIFY = "does_not_verify"

    _MESSAGES = {
        KEY_MISSING: "the tenant's Transit key does not exist (the tenant was shredded or never set up)",
        VERSION_RETIRED: "a wrapped key was made with a key version below min_decryption_version "
        "(it was not rewrapped before the version was retired)",
        DOES_NOT_VERIFY: "a wrapped key does not verify against its associated data (tampered, swapped "
        "between rows, or the wrong tenant/key id)",
    }

    def __init__(self, cause: str, failed: Sequence[int] = ()) -> None:
        super().__init__(
            self._MESSAGES[cause] + "; call on-call", reason=Reason.KEY_UNAVAILABLE, metadata={"key_problem": cause}
        )
        self.cause = cause
        self.failed = tuple(failed)


class TransitRejected(Exception):
    """Transit refused a request for a reason that is our bug or misconfiguration (not an outage, not a key)."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What Transit says about a tenant key (never the key material itself)."""

    name: str
    key_type: str
    latest_version: int
    min_decryption_version: int
    min_encryption_version: int
    deletion_allowed: bool
    exportable: bool
    allow_plaintext_backup: bool


@dataclass(frozen=True, slots=True)
class Signature:
    """A Transit signature, ``vault:v<key_version>:<base64 signature>``."""

    value: str
    key_version: int

    @property
    def raw(self) -> bytes:
        """The bare Ed25519 signature (64 bytes) the prefix wraps."""
        return base64.b64decode(self.value.rsplit(":", 1)[-1])

    @classmethod
    def parse(cls, value: str) -> Signature:
        """Read ``vault:vN:...``; ValueError for anything else."""
        prefix, _, rest = value.partition(":v")
        version, _, body = rest.partition(":")
        if prefix != "vault" or not version.isdigit() or not body:
            raise ValueError("not a Transit signature (vault:v<N>:<base64>)")
        return cls(value, int(version))


def _state(state: str) -> dict[str, str]:
    """ErrorInfo metadata of a Transit outage: which dependency and how it failed (what on-call acts on)."""
    return {"dependency": "transit", "transit_state": state}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _body(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _errors(body: dict[str, Any]) -> list[str]:
    errors = body.get("errors")
    return [str(e) for e in errors] if isinstance(errors, list) else []


def _means_key_missing(errors: Sequence[str]) -> bool:
    # OpenBao says "encryption key not found" (encrypt/decrypt), "key not found" (rotate),
    # "no existing key named ... could be found" (config) and "could not delete key; not found" (delete).
    return any("not found" in e or "no existing key" in e for e in errors)


def _item_failure_reason(errors: Sequence[str]) -> str:
    if _means_key_missing(errors):
        return KeyUnavailable.KEY_MISSING
    if any("disallowed by policy" in e for e in errors):
        return KeyUnavailable.VERSION_RETIRED
    # Authentication failures, malformed or foreign ciphertexts: all "this ciphertext does not verify".
    return KeyUnavailable.DOES_NOT_VERIFY


class TransitClient:
    """Per-tenant key operations on Transit, with bounded timeouts and a circuit breaker.

    ``url``/``token`` address the server; keys are named ``key_prefix + tenant_id`` under ``mount``, and
    ``signing_key`` (Ed25519, one per deployment) signs every tenant's audit checkpoints.
    ``breaker`` may be shared with other clients of the same server; a private one is made if omitted.

    Two identities: ``token`` is the data path (wrap, unwrap, rewrap, sign; OpenBao policies
    ``steward-vault-crypto`` and ``steward-vault-audit-signing``) and ``admin_token``, when given, does the
    tenant-key administration (create, read, rotate, retire versions, delete; ``steward-vault-keys``), so a
    leaked data-path token cannot delete a tenant key; ``admin_url`` (default ``url``) lets it go through its
    own OpenBao proxy. Without ``admin_token`` (dev, ``steward run``) one token does both.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        mount: str = "transit",
        key_prefix: str = "steward-tenant-",
        signing_key: str = "steward-audit-signing",
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 5.0,
        breaker: CircuitBreaker | None = None,
        verify: bool | str = True,
        admin_token: str | None = None,
        admin_url: str | None = None,
    ) -> None:
        self.mount = mount.strip("/")
        self.key_prefix = key_prefix
        if not is_tenant_id(signing_key) or signing_key.startswith(key_prefix):
            # Outside the tenant-key namespace: no tenant id can name it, so no shred can delete it, and the
            # tenant-key policy (transit/keys/<prefix>*, aes256-gcm96 only) does not cover it.
            raise ValueError("the audit-signing key name must be a plain key name that does not start with key_prefix")
        self.signing_key_name = signing_key
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self._session = requests.Session()
        self._client = hvac.Client(
            url=url,
            token=token,
            verify=verify,
            # hvac's default is 30 s; a caller holding a gRPC deadline needs to hear back much sooner.
            timeout=(connect_timeout_s, read_timeout_s),
            session=self._session,
            adapter=RawAdapter,
            ignore_exceptions=True,
        )
        self._transit = self._client.secrets.transit
        # The key-administration identity: its own hvac client on the same pooled session, or the data-path one.
        self._admin_client = self._client
        if admin_token is not None:
            self._admin_client = hvac.Client(
                url=admin_url or url,
                token=admin_token,
                verify=verify,
                timeout=(connect_timeout_s, read_timeout_s),
                session=self._session,
                adapter=RawAdapter,
                ignore_exceptions=True,
            )
        self._admin_transit = self._admin_client.secrets.transit
        self._calls_lock = threading.Lock()
        self._calls = 0
        self._upsert_disabled = False
        self._signing_key_ready = False
        self._public_keys: dict[int, bytes] = {}
        self.call_observer: Callable[[str, str, float], None] | None = None
        """Told ``(op, outcome, seconds)`` after each call (metrics); outcome: ok, breaker_open, unreachable,
        sealed, unavailable, error."""

    @property
    def calls(self) -> int:
        """HTTP requests sent to Transit so far (fail-fast refusals by the breaker are not counted)."""
        with self._calls_lock:
            return self._calls

    def close(self) -> None:
        """Close pooled connections."""
        self._session.close()

    def key_name(self, tenant_id: str) -> str:
        """Name of the tenant's Transit key."""
        if not is_tenant_id(tenant_id):
            # The name becomes part of a URL path; anything else could address another key or endpoint.
            raise ValueError("tenant_id must be 1-128 letters, digits, '_', '-' or '.', starting alphanumeric")
        return self.key_prefix + tenant_id

    # -- key lifecycle -------------------------------------------------------------------------------------

    def create_tenant_key(self, tenant_id: str) -> None:
        """Create the tenant's key (aes256-gcm96, not exportable, no plaintext backup, deletion not allowed).

        Idempotent: an existing key is kept (Transit answers 200), but if it was left deletable it is locked
        again, and if it is exportable or backup-able (irreversible settings) :class:`TransitRejected` is
        raised. The first call per client also disables upserts on the mount, so encrypting under a
        shredded tenant's key name fails instead of silently creating a fresh key.
        """
        name = self.key_name(tenant_id)
        if not self._upsert_disabled:
            self.disable_upsert()
        self._create_key(name, KEY_TYPE, "this tenant", admin=True)

    def _create_key(self, name: str, key_type: str, owner: str, *, admin: bool) -> None:
        """Create a non-exportable key without plaintext backup, or check and re-lock the existing one.

        ``admin``: as the key-administration identity (tenant keys) or the data-path one (the signing key).
        """
        transit = self._admin_transit if admin else self._transit
        response = self._send(
            "create key",
            lambda: transit.create_key(
                name,
                key_type=key_type,
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=self.mount,
            ),
        )
        body = self._management_body("create key", response)
        data = body.get("data") or {}
        if not data:
            # Older servers answer 204 without the key; read it to check the settings below.
            data = self._read_key(name, admin=admin)
        if data.get("type") != key_type or data.get("exportable") or data.get("allow_plaintext_backup"):
            raise TransitRejected(
                f"an existing Transit key for {owner} has unsafe settings (wrong type, exportable or "
                "plaintext backup); an operator must resolve it"
            )
        if data.get("deletion_allowed"):
            self._configure("lock key", name, deletion_allowed=False, admin=admin)

    def disable_upsert(self) -> None:
        """Set ``disable_upsert`` on the mount: encrypting under a missing key fails instead of creating it."""
        path = f"/v1/{self.mount}/config/keys"
        adapter = self._admin_client.adapter
        response = self._send("disable upsert", lambda: adapter.post(path, json={"disable_upsert": True}))
        self._management_body("disable upsert", response)
        self._upsert_disabled = True

    def key_info(self, tenant_id: str) -> KeyInfo:
        """Versions and flags of the tenant key; :class:`KeyUnavailable` if it does not exist."""
        name = self.key_name(tenant_id)
        data = self._read_key(name, admin=True)
        return KeyInfo(
            name=name,
            key_type=str(data.get("type", "")),
            latest_version=int(data.get("latest_version", 0)),
            min_decryption_version=int(data.get("min_decryption_version", 0)),
            min_encryption_version=int(data.get("min_encryption_version", 0)),
            deletion_allowed=bool(data.get("deletion_allowed")),
            exportable=bool(data.get("exportable")),
            allow_plaintext_backup=bool(data.get("allow_plaintext_backup")),
        )

    def rotate(self, tenant_id: str) -> int:
        """Add a key version; new wraps use it. Returns the new latest version."""
        name = self.key_name(tenant_id)
        response = self._send("rotate key", lambda: self._admin_transit.rotate_key(name, mount_point=self.mount))
        data = self._management_body("rotate key", response).get("data") or {}
        if "latest_version" not in data:
            data = self._read_key(name, admin=True)
        return int(data["latest_version"])

    def set_min_decryption_version(self, tenant_id: str, version: int) -> None:
        """Retire key versions below ``version``: ciphertexts made with them no longer decrypt.

        Rewrap everything first (:meth:`rewrap`); raising this is how a KEK rotation completes.
        """
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError("min_decryption_version must be a positive integer")
        self._configure(
            "set min decryption version", self.key_name(tenant_id), min_decryption_version=version, admin=True
        )

    def delete_tenant_key(self, tenant_id: str) -> None:
        """Shred the tenant: allow deletion of its key only now, then delete it (two calls).

        Every DEK ever wrapped under the key becomes undecryptable. Idempotent: a key already gone is fine.
        The caller must also evict the tenant from its DEK cache.
        """
        name = self.key_name(tenant_id)
        try:
            self._configure("allow deletion", name, deletion_allowed=True, admin=True)
        except KeyUnavailable:
            return
        response = self._send("delete key", lambda: self._admin_transit.delete_key(name, mount_point=self.mount))
        try:
            self._management_body("delete key", response)
        except KeyUnavailable:
            return  # deleted by someone else between our two calls

    # -- audit signing -----------------------------------------------------------------------------------

    def create_signing_key(self) -> None:
        """Create the Ed25519 audit-signing key (not exportable, not deletable). Idempotent."""
        self._create_key(self.signing_key_name, SIGNING_KEY_TYPE, "audit signing", admin=False)
        self._signing_key_ready = True

    def sign(self, messages: Sequence[bytes]) -> list[Signature]:
        """Sign each message with the audit-signing key (created on first use if missing); one HTTP call."""
        if not messages:
            return []
        if not self._signing_key_ready:
            self.create_signing_key()
        batch = [{"input": _b64(message)} for message in messages]
        name = self.signing_key_name
        response = self._send("sign", lambda: self._transit.sign_data(name, batch_input=batch, mount_point=self.mount))
        return [Signature.parse(str(item["signature"])) for item in self._batch_results("sign", response, len(batch))]

    def signing_public_key(self, version: int) -> bytes | None:
        """The raw 32-byte Ed25519 public key of one version of the audit-signing key; None if no such version.

        Read from Transit, never from the database, so whoever can write the database cannot swap it; cached,
        since a version's public key never changes.
        """
        with self._calls_lock:
            cached = self._public_keys.get(version)
        if cached is not None:
            return cached
        keys = self._read_key(self.signing_key_name, admin=False).get("keys") or {}
        found = {int(v): base64.b64decode(k["public_key"]) for v, k in keys.items() if k.get("public_key")}
        with self._calls_lock:
            self._public_keys.update(found)
        return found.get(version)

    # -- data keys -----------------------------------------------------------------------------------------

    def wrap(self, tenant_id: str, items: Sequence[tuple[bytes, bytes]]) -> list[str]:
        """Encrypt 32-byte DEKs under the tenant key, each bound to its associated data; one HTTP call.

        ``items`` are ``(dek, associated_data)`` pairs (use :func:`services.vault.sealing.key_aad`); returns the
        ``vault:vN:...`` ciphertexts in the same order. An empty batch makes no call.
        """
        if not items:
            return []
        batch = []
        for dek, aad in items:
            if len(dek) != DEK_BYTES:
                raise ValueError("wrap expects 32-byte DEKs")
            if not aad:
                raise ValueError("wrap needs non-empty associated data to bind each DEK to its tenant and id")
            batch.append({"plaintext": _b64(dek), "associated_data": _b64(aad)})
        name = self.key_name(tenant_id)
        response = self._send(
            "wrap", lambda: self._transit.encrypt_data(name, batch_input=batch, mount_point=self.mount)
        )
        return [str(item["ciphertext"]) for item in self._batch_results("wrap", response, len(batch))]

    def unwrap(self, tenant_id: str, items: Sequence[tuple[str, bytes]]) -> list[bytes]:
        """Decrypt wrapped DEKs with the associated data they were wrapped with; one HTTP call.

        Raises :class:`KeyUnavailable` if the key is gone, or if any item is on a retired version or does
        not verify (``failed`` lists which); nothing is returned for a partly failed batch.
        """
        if not items:
            return []
        batch = [{"ciphertext": ciphertext, "associated_data": _b64(aad)} for ciphertext, aad in items]
        name = self.key_name(tenant_id)
        response = self._send(
            "unwrap", lambda: self._transit.decrypt_data(name, batch_input=batch, mount_point=self.mount)
        )
        return [base64.b64decode(item["plaintext"]) for item in self._batch_results("unwrap", response, len(batch))]

    def rewrap(self, tenant_id: str, items: Sequence[tuple[str, bytes]]) -> list[str]:
        """Move wrapped DEKs to the latest key version, keeping each one's associated data.

        Finding (OpenBao v2.7.2, checked by ``test_server_rewrap_cannot_carry_associated_data``): the
        ``/rewrap`` endpoint ignores ``associated_data`` -- every AAD-bound item fails with "cipher: message
        authentication failed", and a batch of such failures still answers HTTP 200. So this is a batched
        decrypt followed by a batched encrypt (two calls): the DEKs pass through this process's memory
        and are dropped at once; they are never returned to the caller.
        """
        if not items:
            return []
        deks = self.unwrap(tenant_id, items)
        return self.wrap(tenant_id, [(dek, aad) for dek, (_, aad) in zip(deks, items, strict=True)])

    def healthy(self) -> bool:
        """Does ``/sys/health`` say the server is initialised, unsealed and active (or a standby)?

        A direct probe: it ignores the breaker's state and does not feed it, so readiness checks can see
        Transit come back before the breaker's next probe. Counted in ``calls``.
        """
        return self.health_status() == 200

    def health_status(self) -> int | None:
        """``/sys/health``'s HTTP status (200 serving, 503 sealed, 501 uninitialised), None when unreachable.

        Like :meth:`healthy`, outside the breaker and counted in ``calls``.
        """
        self._count_call()
        try:
            response = self._client.sys.read_health_status(method="GET", standby_ok=True)
        except requests.RequestException:
            return None
        return int(response.status_code)

    # -- plumbing ------------------------------------------------------------------------------------------

    def _count_call(self) -> None:
        with self._calls_lock:
            self._calls += 1

    def _send(self, op: str, send: Callable[[], requests.Response]) -> requests.Response:
        """Run one HTTP call through the breaker; outages become Unavailable, any answer is returned."""
        started = time.perf_counter()
        outcome = "error"
        try:
            if not self.breaker.allow():
                outcome = "breaker_open"
                raise Unavailable(
                    UNAVAILABLE_MESSAGE, retry_after_s=self.breaker.retry_after_s(), metadata=_state(outcome)
                )
            self._count_call()
            try:
                response = send()
            except requests.RequestException as exc:
                self.breaker.record_failure()
                outcome = "unreachable"
                # The exception text is host/port/reason only; the request body never appears in it.
                log.warning("Transit %s failed: %s: %s", op, type(exc).__name__, exc)
                raise Unavailable(UNAVAILABLE_MESSAGE, metadata=_state(outcome)) from None
            except BaseException:
                self.breaker.record_failure()
                raise
            status = response.status_code
            if status >= 500 or status in _UNAVAILABLE_STATUSES:
                self.breaker.record_failure()
                outcome = "sealed" if status == 503 else "unavailable"
                level = logging.ERROR if status in (401, 403) else logging.WARNING
                log.log(level, "Transit %s answered HTTP %d (%s)", op, status, "; ".join(_errors(_body(response))))
                state = "refused" if status in (401, 403) else outcome
                raise Unavailable(UNAVAILABLE_MESSAGE, metadata=_state(state))
            self.breaker.record_success()
            outcome = "ok"
            return response
        finally:
            if self.call_observer is not None:
                self.call_observer(op, outcome, time.perf_counter() - started)

    def _management_body(self, op: str, response: requests.Response) -> dict[str, Any]:
        """Body of a key-management answer (requests without data, so server errors are safe to quote)."""
        if response.status_code in (200, 204):
            return _body(response) if response.status_code == 200 else {}
        errors = _errors(_body(response))
        if response.status_code == 404 or (response.status_code == 400 and _means_key_missing(errors)):
            raise KeyUnavailable(KeyUnavailable.KEY_MISSING)
        raise TransitRejected(f"Transit refused {op} (HTTP {response.status_code}): {'; '.join(errors)}")

    def _read_key(self, name: str, *, admin: bool) -> dict[str, Any]:
        transit = self._admin_transit if admin else self._transit
        response = self._send("read key", lambda: transit.read_key(name, mount_point=self.mount))
        data = self._management_body("read key", response).get("data")
        return data if isinstance(data, dict) else {}

    def _configure(self, op: str, name: str, *, admin: bool, **settings: Any) -> None:
        transit = self._admin_transit if admin else self._transit
        response = self._send(op, lambda: transit.update_key_configuration(name, mount_point=self.mount, **settings))
        self._management_body(op, response)

    def _batch_results(self, op: str, response: requests.Response, expected: int) -> list[dict[str, Any]]:
        """Per-item results of a batch encrypt/decrypt, or KeyUnavailable/TransitRejected.

        Server error strings are classified but never quoted: this body may hold plaintext of other items.
        """
        body = _body(response)
        data = body.get("data")
        results = data.get("batch_results") if isinstance(data, dict) else None
        if response.status_code not in (200, 400):
            raise TransitRejected(f"Transit refused {op} (HTTP {response.status_code})")
        if not isinstance(results, list):
            errors = _errors(body)
            if _means_key_missing(errors):
                raise KeyUnavailable(KeyUnavailable.KEY_MISSING, range(expected))
            raise TransitRejected(f"Transit refused {op} (HTTP {response.status_code}) without batch results")
        if len(results) != expected:
            raise TransitRejected(f"Transit answered {op} with {len(results)} results for {expected} items")
        failed = [i for i, item in enumerate(results) if item.get("error")]
        if failed:
            raise KeyUnavailable(_item_failure_reason([str(results[i]["error"]) for i in failed]), failed)
        return results
