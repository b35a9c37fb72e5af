"""The dev CA: chains that verify, private keys, reuse and re-issue, and mTLS with the chassis allowlist."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store
from grpc import aio

from services.chassis.grpc_server import build_server
from services.chassis.settings import GrpcSettings, TlsSettings
from services.devstack.devca import LEAF_VALIDITY, DevPki, ensure_dev_pki, inspect_certificate

NAMES = ["gateway", "vault", "dsr", "notify", "steward-cli"]


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    issued, actions = ensure_dev_pki(tmp_path / "tls", NAMES)
    assert actions[0] == "created dev CA"
    return issued


def test_every_certificate_verifies_against_the_ca_as_server_and_as_client(pki: DevPki) -> None:
    store = Store([load(pki.ca_file)])
    for name in NAMES:
        cert = load(pki[name].cert_file)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        for server_name in (DNSName(name), DNSName("localhost"), IPAddress(ipaddress.ip_address("127.0.0.1"))):
            PolicyBuilder().store(store).build_server_verifier(server_name).verify(cert, [])
        verified = PolicyBuilder().store(store).build_client_verifier().verify(cert, [])
        assert x509.DNSName(name) in verified.subjects


def test_private_keys_are_owner_only_and_certificates_readable(pki: DevPki) -> None:
    assert pki.ca_key_file.stat().st_mode & 0o777 == 0o600
    for name in NAMES:
        assert pki[name].key_file.stat().st_mode & 0o777 == 0o600
        assert pki[name].cert_file.stat().st_mode & 0o777 == 0o644
    assert pki.ca_file.parent.stat().st_mode & 0o777 == 0o700


def test_a_second_run_reuses_valid_certificates_byte_for_byte(pki: DevPki) -> None:
    before = {name: pki[name].cert_file.read_bytes() for name in NAMES}
    again, actions = ensure_dev_pki(pki.ca_file.parent, NAMES)
    assert actions == []
    assert {name: again[name].cert_file.read_bytes() for name in NAMES} == before


def test_certificates_close_to_expiry_are_reissued_and_the_ca_kept(pki: DevPki) -> None:
    ca_before = pki.ca_file.read_bytes()
    later = dt.datetime.now(dt.UTC) + LEAF_VALIDITY - dt.timedelta(days=10)
    again, actions = ensure_dev_pki(pki.ca_file.parent, NAMES, now=later)
    assert pki.ca_file.read_bytes() == ca_before
    expected = [f"issued certificate for {name} (old one expires within 30 days)" for name in NAMES]
    assert sorted(actions) == sorted(expected)
    assert load(again["vault"].cert_file).not_valid_after_utc > later + dt.timedelta(days=300)


def test_a_new_ca_reissues_every_certificate(pki: DevPki) -> None:
    pki.ca_file.unlink()
    again, actions = ensure_dev_pki(pki.ca_file.parent, NAMES)
    assert actions[0] == "created dev CA"
    assert all(f"issued certificate for {name} (old one not issued by the current dev CA)" in actions for name in NAMES)
    report = inspect_certificate("vault", again["vault"].cert_file, again.ca_file, key_file=again["vault"].key_file)
    assert report.valid, report.problem


def test_inspection_reports_loose_key_permissions_and_a_foreign_ca(pki: DevPki, tmp_path: Path) -> None:
    vault = pki["vault"]
    pki_elsewhere, _ = ensure_dev_pki(tmp_path / "other", ["vault"])

    foreign = inspect_certificate("vault", pki_elsewhere["vault"].cert_file, pki.ca_file)
    assert not foreign.valid and "does not verify against the dev CA" in (foreign.problem or "")

    vault.key_file.chmod(0o644)
    loose = inspect_certificate("vault", vault.cert_file, pki.ca_file, key_file=vault.key_file)
    assert not loose.valid and loose.problem == "key file mode is 644, expected 600"

    expired = inspect_certificate(
        "vault", vault.cert_file, pki.ca_file, now=dt.datetime.now(dt.UTC) + LEAF_VALIDITY + dt.timedelta(days=1)
    )
    assert not expired.valid and expired.problem == "expired"


def _credentials(pki: DevPki, identity: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca_file.read_bytes(),
        private_key=pki[identity].key_file.read_bytes(),
        certificate_chain=pki[identity].cert_file.read_bytes(),
    )


async def test_services_accept_the_gateway_certificate_and_refuse_other_identities(pki: DevPki) -> None:
    """gRPC reports a peer's SANs, not its CN, so the allowlist works only because of the DNS:<name> SAN."""

    async def ping(_request: bytes, _context: aio.ServicerContext) -> bytes:
        return b"pong"

    def register(server: aio.Server) -> list[str]:
        methods = {"Ping": grpc.unary_unary_rpc_method_handler(ping)}
        handler = grpc.method_handlers_generic_handler("test.v1.Probe", methods)
        server.add_generic_rpc_handlers((handler,))
        return ["test.v1.Probe"]

    tls = TlsSettings(
        cert_file=pki["vault"].cert_file,
        key_file=pki["vault"].key_file,
        client_ca_file=pki.ca_file,
        allowed_client_names=["gateway"],
    )
    running = await build_server(GrpcSettings(port=0, tls=tls), register=register)
    address = f"127.0.0.1:{running.port}"
    try:
        async with aio.secure_channel(address, _credentials(pki, "gateway")) as channel:
            assert await channel.unary_unary("/test.v1.Probe/Ping")(b"", timeout=10) == b"pong"

        async with aio.secure_channel(address, _credentials(pki, "steward-cli")) as channel:
            with pytest.raises(aio.AioRpcError) as refused:
                await channel.unary_unary("/test.v1.Probe/Ping")(b"", timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

        anonymous = grpc.ssl_channel_credentials(root_certificates=pki.ca_file.read_bytes())
        async with aio.secure_channel(address, anonymous) as channel:
            with pytest.raises(aio.AioRpcError) as no_certificate:
                await channel.unary_unary("/test.v1.Probe/Ping")(b"", timeout=10)
            assert no_certificate.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.shutdown(0)
