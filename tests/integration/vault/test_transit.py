"""TransitClient against a real OpenBao dev server: batching, AAD binding, rotation, shredding, outages."""

from __future__ import annotations

import base64
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import hvac
import hvac.exceptions
import pytest

from services.chassis.circuit import CircuitBreaker
from services.chassis.clock import ManualClock
from services.chassis.errors import Unavailable
from services.chassis.transit import UNAVAILABLE_MESSAGE, KeyUnavailable, TransitClient
from services.vault.sealing import key_aad, new_key
from tests.plugins.infra import OpenBaoDev


def new_tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def deks_with_aad(tenant: str, n: int) -> list[tuple[bytes, bytes]]:
    return [(new_key(), key_aad(tenant, f"dek-{i}")) for i in range(n)]


@pytest.fixture
def transit(openbao: OpenBaoDev) -> Iterator[TransitClient]:
    client = TransitClient(openbao.url, openbao.token)
    yield client
    client.close()


@pytest.fixture
def tenant(transit: TransitClient) -> str:
    tenant_id = new_tenant()
    transit.create_tenant_key(tenant_id)
    return tenant_id


def raw_hvac(server: OpenBaoDev) -> hvac.Client:
    return hvac.Client(url=server.url, token=server.token, timeout=5)


def test_tenant_key_is_created_locked_down_and_creation_is_idempotent(
    transit: TransitClient, tenant: str, openbao: OpenBaoDev
) -> None:
    transit.create_tenant_key(tenant)
    info = transit.key_info(tenant)
    assert info.name == f"steward-tenant-{tenant}"
    assert info.key_type == "aes256-gcm96"
    assert (info.exportable, info.allow_plaintext_backup, info.deletion_allowed) == (False, False, False)
    assert info.latest_version == 1
    # Upserts are off, so a typo'd or shredded key name can never be silently created by an encrypt.
    assert raw_hvac(openbao).adapter.get("/v1/transit/config/keys")["data"]["disable_upsert"] is True


def test_wrap_and_unwrap_of_100_deks_take_one_call_each(transit: TransitClient, tenant: str) -> None:
    items = deks_with_aad(tenant, 100)
    before = transit.calls
    wrapped = transit.wrap(tenant, items)
    assert transit.calls == before + 1
    assert len(wrapped) == 100 and all(c.startswith("vault:v1:") for c in wrapped)
    assert len(set(wrapped)) == 100

    unwrapped = transit.unwrap(tenant, [(c, aad) for c, (_, aad) in zip(wrapped, items, strict=True)])
    assert transit.calls == before + 2
    assert unwrapped == [dek for dek, _ in items]


def test_empty_batches_make_no_call(transit: TransitClient, tenant: str) -> None:
    before = transit.calls
    assert transit.wrap(tenant, []) == []
    assert transit.unwrap(tenant, []) == []
    assert transit.rewrap(tenant, []) == []
    assert transit.calls == before


def test_swapped_associated_data_does_not_unwrap_and_leaks_no_key_material(transit: TransitClient, tenant: str) -> None:
    items = deks_with_aad(tenant, 3)
    wrapped = transit.wrap(tenant, items)
    # Item 2 presented with item 1's AAD (a DEK copied onto another subject's row): items 0 and 1 still decrypt
    # server-side, and their plaintext is in Transit's 400 body -- it must not reach the exception.
    swapped = [(wrapped[0], items[0][1]), (wrapped[1], items[1][1]), (wrapped[2], items[1][1])]
    with pytest.raises(KeyUnavailable) as caught:
        transit.unwrap(tenant, swapped)
    assert caught.value.cause == KeyUnavailable.DOES_NOT_VERIFY
    assert caught.value.failed == (2,)
    text = f"{caught.value!s} {caught.value!r}"
    for dek, _ in items:
        assert base64.b64encode(dek).decode() not in text and dek.hex() not in text
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_one_tenants_wrapped_dek_does_not_unwrap_under_another_tenants_key(transit: TransitClient, tenant: str) -> None:
    other = new_tenant()
    transit.create_tenant_key(other)
    items = deks_with_aad(tenant, 1)
    wrapped = transit.wrap(tenant, items)
    with pytest.raises(KeyUnavailable) as caught:
        transit.unwrap(other, [(wrapped[0], items[0][1])])
    assert caught.value.cause == KeyUnavailable.DOES_NOT_VERIFY


def test_rotation_with_rewrap_then_min_decryption_version_retires_only_old_ciphertexts(
    transit: TransitClient, tenant: str
) -> None:
    items = deks_with_aad(tenant, 10)
    old = transit.wrap(tenant, items)
    assert transit.rotate(tenant) == 2

    before = transit.calls
    rewrapped = transit.rewrap(tenant, [(c, aad) for c, (_, aad) in zip(old, items, strict=True)])
    assert transit.calls == before + 2  # batched decrypt + batched encrypt, see TransitClient.rewrap
    assert all(c.startswith("vault:v2:") for c in rewrapped)

    transit.set_min_decryption_version(tenant, 2)
    assert transit.key_info(tenant).min_decryption_version == 2
    with pytest.raises(KeyUnavailable) as caught:
        transit.unwrap(tenant, [(old[0], items[0][1])])
    assert caught.value.cause == KeyUnavailable.VERSION_RETIRED
    assert transit.unwrap(tenant, [(c, aad) for c, (_, aad) in zip(rewrapped, items, strict=True)]) == [
        dek for dek, _ in items
    ]


def test_server_rewrap_cannot_carry_associated_data(transit: TransitClient, tenant: str, openbao: OpenBaoDev) -> None:
    """The finding behind TransitClient.rewrap. If this starts failing, OpenBao learned AAD on rewrap:
    switch rewrap to the server-side endpoint so DEKs never leave Transit."""
    items = deks_with_aad(tenant, 2)
    wrapped = transit.wrap(tenant, items)
    transit.rotate(tenant)
    batch = [
        {"ciphertext": c, "associated_data": base64.b64encode(aad).decode()}
        for c, (_, aad) in zip(wrapped, items, strict=True)
    ]
    answer = raw_hvac(openbao).secrets.transit.rewrap_data(transit.key_name(tenant), ciphertext=None, batch_input=batch)
    results = answer["data"]["batch_results"]  # HTTP 200 even though every item failed
    assert all("message authentication failed" in r.get("error", "") for r in results)


def test_shredded_tenant_key_makes_its_deks_undecryptable_even_directly(
    transit: TransitClient, tenant: str, openbao: OpenBaoDev
) -> None:
    items = deks_with_aad(tenant, 2)
    wrapped = transit.wrap(tenant, items)
    transit.delete_tenant_key(tenant)

    with pytest.raises(KeyUnavailable) as caught:
        transit.unwrap(tenant, [(c, aad) for c, (_, aad) in zip(wrapped, items, strict=True)])
    assert caught.value.cause == KeyUnavailable.KEY_MISSING
    assert caught.value.failed == (0, 1)

    direct = raw_hvac(openbao).secrets.transit
    with pytest.raises(hvac.exceptions.InvalidRequest, match="encryption key not found"):
        direct.decrypt_data(
            transit.key_name(tenant),
            batch_input=[{"ciphertext": wrapped[0], "associated_data": base64.b64encode(items[0][1]).decode()}],
        )
    with pytest.raises(hvac.exceptions.InvalidPath):
        direct.read_key(transit.key_name(tenant))

    transit.delete_tenant_key(tenant)  # idempotent
    # Wrapping for a shredded tenant must fail, not quietly create a fresh key under the old name.
    with pytest.raises(KeyUnavailable) as caught:
        transit.wrap(tenant, deks_with_aad(tenant, 1))
    assert caught.value.cause == KeyUnavailable.KEY_MISSING
    with pytest.raises(KeyUnavailable):
        transit.key_info(tenant)


def test_key_operations_on_a_missing_key_raise_key_unavailable(transit: TransitClient) -> None:
    ghost = new_tenant()
    for call in (lambda: transit.rotate(ghost), lambda: transit.set_min_decryption_version(ghost, 1)):
        with pytest.raises(KeyUnavailable):
            call()
    transit.delete_tenant_key(ghost)  # nothing to delete is fine


def test_bad_inputs_are_refused_before_any_call(transit: TransitClient, tenant: str) -> None:
    before = transit.calls
    with pytest.raises(ValueError):
        transit.key_name("../sys/seal")
    with pytest.raises(ValueError):
        transit.wrap(tenant, [(b"short", b"aad")])
    with pytest.raises(ValueError):
        transit.wrap(tenant, [(new_key(), b"")])
    with pytest.raises(ValueError):
        transit.set_min_decryption_version(tenant, 0)
    assert transit.calls == before


def test_healthy_reports_a_live_server(transit: TransitClient) -> None:
    assert transit.healthy() is True


def listener_on(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(8)
    sock.setblocking(False)
    return sock


def test_stopped_server_is_unavailable_and_the_open_breaker_fails_fast_without_network(
    openbao_private: OpenBaoDev,
) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=30.0, clock=clock)
    client = TransitClient(openbao_private.url, openbao_private.token, breaker=breaker)
    tenant = new_tenant()
    client.create_tenant_key(tenant)
    items = deks_with_aad(tenant, 3)
    wrapped = client.wrap(tenant, items)
    openbao_private.stop()

    for _ in range(2):
        with pytest.raises(Unavailable) as caught:
            client.unwrap(tenant, [(wrapped[0], items[0][1])])
        assert caught.value.message == UNAVAILABLE_MESSAGE
    assert breaker.state == "open"
    assert client.healthy() is False

    # Something now answers on the old port; an open breaker must not even connect to it.
    with listener_on(openbao_private.port) as listener:
        before = client.calls
        with pytest.raises(Unavailable) as caught:
            client.wrap(tenant, deks_with_aad(tenant, 1))
        assert caught.value.retry_after_s == pytest.approx(30.0)
        assert client.calls == before
        with pytest.raises(BlockingIOError):
            listener.accept()
    client.close()


def test_sealed_server_is_unavailable_and_a_failed_probe_reopens_the_breaker(openbao_private: OpenBaoDev) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=5.0, clock=clock)
    client = TransitClient(openbao_private.url, openbao_private.token, breaker=breaker)
    tenant = new_tenant()
    client.create_tenant_key(tenant)
    openbao_private.seal()

    for _ in range(2):
        with pytest.raises(Unavailable):
            client.wrap(tenant, deks_with_aad(tenant, 1))
    assert breaker.state == "open"
    assert client.healthy() is False
    before = client.calls
    with pytest.raises(Unavailable):
        client.rotate(tenant)
    assert client.calls == before

    clock.advance(5.0)
    with pytest.raises(Unavailable):
        client.wrap(tenant, deks_with_aad(tenant, 1))  # the probe goes out and meets the 503
    assert client.calls == before + 1
    assert breaker.state == "open"
    client.close()


def test_hung_server_times_out_and_the_breaker_closes_when_it_answers_again(openbao_private: OpenBaoDev) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=5.0, clock=clock)
    client = TransitClient(openbao_private.url, openbao_private.token, read_timeout_s=0.5, breaker=breaker)
    tenant = new_tenant()
    client.create_tenant_key(tenant)
    items = deks_with_aad(tenant, 2)
    wrapped = client.wrap(tenant, items)

    openbao_private.pause()
    try:
        with pytest.raises(Unavailable):
            client.unwrap(tenant, [(wrapped[0], items[0][1])])
        assert breaker.state == "open"
    finally:
        openbao_private.resume()

    clock.advance(5.0)
    assert client.unwrap(tenant, [(c, aad) for c, (_, aad) in zip(wrapped, items, strict=True)]) == [
        dek for dek, _ in items
    ]
    assert breaker.state == "closed"
    client.close()


def test_one_client_serves_many_worker_threads(transit: TransitClient, tenant: str) -> None:
    batches = [deks_with_aad(tenant, 5) for _ in range(8)]
    before = transit.calls

    def round_trip(items: list[tuple[bytes, bytes]]) -> bool:
        wrapped = transit.wrap(tenant, items)
        return transit.unwrap(tenant, [(c, aad) for c, (_, aad) in zip(wrapped, items, strict=True)]) == [
            dek for dek, _ in items
        ]

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(round_trip, batches))
    assert transit.calls == before + 16
