"""DKIM signing of notify's email: what the real aiosmtpd sink receives verifies with dkimpy against the public
key; a changed body or header does not; bad DKIM settings stop the channel from starting with a clear message."""

from __future__ import annotations

import base64
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from services.chassis.settings import SettingsError
from services.devstack.devca import DevPki
from services.devstack.smtp_sink import SmtpSink
from services.notify.channels import Lane, Outcome, OutgoingMessage
from services.notify.email import EmailChannel
from services.notify.settings import SmtpSettings

SELECTOR = "s2026"
DOMAIN = "steward.test"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "dkim.pem"
    # PKCS#8, as `openssl genpkey` writes it.
    path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def txt_record(key: rsa.RSAPrivateKey) -> bytes:
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def dns_for(key: rsa.RSAPrivateKey):  # type: ignore[no-untyped-def]
    record = txt_record(key)

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None

    return lookup


def smtp_settings(smtp_sink: SmtpSink | None, smtp_pki: DevPki | None, **dkim_fields: object) -> SmtpSettings:
    return SmtpSettings(
        host=smtp_sink.host if smtp_sink else "127.0.0.1",
        port=smtp_sink.port if smtp_sink else 465,
        tls="starttls",
        ca_file=smtp_pki.ca_file if smtp_pki else None,
        from_address=f"notices@{DOMAIN}",
        timeout_s=5,
        dkim=dkim_fields,  # type: ignore[arg-type]
    )


def notice() -> OutgoingMessage:
    return OutgoingMessage(
        recipient="lead@example.com",
        lane=Lane.SERVICE,
        reference="ref-dkim",
        subject="सूचना: policy change",
        text_body="नमस्ते,\nour privacy policy changes on 1 January.\n.a line starting with a dot\n",
        html_body="<p>नमस्ते, our privacy policy changes.</p>",
        headers={
            "List-Unsubscribe": "<https://steward.test/unsubscribe?token=abc>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )


async def test_the_sink_receives_a_signature_that_verifies_and_covers_the_headers(
    smtp_sink: SmtpSink, smtp_pki: DevPki, key_file: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    channel = EmailChannel(smtp_settings(smtp_sink, smtp_pki, selector=SELECTOR, private_key_file=key_file))
    try:
        assert (await channel.send(notice())).outcome == Outcome.SENT
    finally:
        await channel.close()
    (raw,) = smtp_sink.raw()
    assert raw.startswith(b"DKIM-Signature:")
    assert dkim.verify(raw, dnsfunc=dns_for(rsa_key))
    signature = smtp_sink.messages()[0]["DKIM-Signature"]
    tags = {part.split("=", 1)[0].strip(): part.split("=", 1)[1] for part in signature.split(";") if "=" in part}
    assert tags["d"].strip() == DOMAIN and tags["s"].strip() == SELECTOR
    signed = {name.strip().lower() for name in "".join(tags["h"].split()).split(":")}
    assert {"from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post"} <= signed
    assert {"mime-version", "content-type"} <= signed


async def test_a_changed_body_or_header_does_not_verify(
    smtp_sink: SmtpSink, smtp_pki: DevPki, key_file: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    channel = EmailChannel(smtp_settings(smtp_sink, smtp_pki, selector=SELECTOR, private_key_file=key_file))
    try:
        await channel.send(notice())
    finally:
        await channel.close()
    (raw,) = smtp_sink.raw()
    assert dkim.verify(raw, dnsfunc=dns_for(rsa_key))
    for before, after in ((b"on 1 January", b"on 2 January"), (b"token=abc", b"token=evil")):
        tampered = raw.replace(before, after)
        assert tampered != raw
        assert not dkim.verify(tampered, dnsfunc=dns_for(rsa_key))
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert not dkim.verify(raw, dnsfunc=dns_for(other_key))


def test_without_dkim_settings_nothing_is_signed() -> None:
    channel = EmailChannel(SmtpSettings(from_address=f"notices@{DOMAIN}"))
    assert channel.signer is None
    assert b"DKIM-Signature" not in channel.wire_bytes(notice())[0]


def test_an_unreadable_key_file_fails_at_start_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="STEWARD_NOTIFY__SMTP__DKIM__PRIVATE_KEY_FILE") as refused:
        EmailChannel(smtp_settings(None, None, selector=SELECTOR, private_key_file=tmp_path / "missing.pem"))
    assert "cannot be read" in str(refused.value)


@pytest.mark.parametrize("content", ["not a key", "ec"])
def test_a_key_that_is_not_rsa_pem_fails_at_start_naming_the_setting(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.pem"
    if content == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    else:
        path.write_text(content)
    with pytest.raises(SettingsError, match="not an unencrypted RSA private key") as refused:
        EmailChannel(smtp_settings(None, None, selector=SELECTOR, private_key_file=path))
    assert "STEWARD_NOTIFY__SMTP__DKIM__PRIVATE_KEY_FILE" in str(refused.value)
    assert content not in str(refused.value) or content == "ec"


@pytest.mark.parametrize("selector", [None, "", "bad selector"])
def test_a_missing_or_malformed_selector_is_refused(key_file: Path, selector: str | None) -> None:
    fields: dict[str, object] = {"private_key_file": key_file}
    if selector is not None:
        fields["selector"] = selector
    with pytest.raises(ValidationError) as refused:
        smtp_settings(None, None, **fields)
    assert ("dkim", "selector") in {tuple(error["loc"]) for error in refused.value.errors()}
