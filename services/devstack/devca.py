"""A development certificate authority for the local stack's mTLS.

The CA and one certificate per identity (``gateway``, ``vault``, ``dsr``, ``notify`` and the CLI) live
under ``.steward/tls``: ``ca.crt``/``ca.key`` and ``<name>.crt``/``<name>.key``, keys 0600. Every
identity certificate is valid for both server and client auth, has CN = the name and SANs
``DNS:<name>``, ``DNS:localhost``, ``IP:127.0.0.1``. The ``DNS:<name>`` SAN matters: gRPC reports a
peer's SANs (not its CN) when it has any, and the services' allowlist matches on ``gateway``.

:func:`ensure_dev_pki` reuses what is on disk while it is still valid and re-issues only what is
missing, expiring within :data:`RENEW_BEFORE`, or no longer matching the CA. Nothing here is meant
for production: there, certificates come from the cluster's issuer.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import DNSName, PolicyBuilder, Store, VerificationError

from services.cli.home import write_file_atomically

__all__ = [
    "CA_VALIDITY",
    "LEAF_VALIDITY",
    "RENEW_BEFORE",
    "CertificateReport",
    "DevPki",
    "IssuedCertificate",
    "ensure_dev_pki",
    "inspect_certificate",
]

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
_CLOCK_SKEW = dt.timedelta(minutes=5)
_ORGANISATION = "Steward local development"


@dataclass(frozen=True)
class IssuedCertificate:
    """One identity's certificate and private key files."""

    name: str
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class DevPki:
    """The CA and the certificates issued for the stack."""

    ca_file: Path
    ca_key_file: Path
    certificates: dict[str, IssuedCertificate]

    def __getitem__(self, name: str) -> IssuedCertificate:
        return self.certificates[name]


@dataclass(frozen=True)
class CertificateReport:
    """What ``steward doctor`` shows for one certificate: valid or not, and until when."""

    name: str
    path: Path
    valid: bool
    not_after: dt.datetime | None
    problem: str | None = None

    def expires_in(self, now: dt.datetime) -> dt.timedelta | None:
        """Time left before the certificate expires."""
        return None if self.not_after is None else self.not_after - now


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _paths(tls_dir: Path, name: str) -> tuple[Path, Path]:
    return tls_dir / f"{name}.crt", tls_dir / f"{name}.key"


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: fast to generate (start-up stays quick) and supported by every TLS stack gRPC uses.
    return ec.generate_private_key(ec.SECP256R1())


def _write_pair(cert_file: Path, key_file: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_file_atomically(key_file, key_pem, mode=0o600)
    write_file_atomically(cert_file, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _load_pair(cert_file: Path, key_file: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The certificate and its key, or None when either is missing, unreadable or they do not match."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return cert, key


def _create_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANISATION),
            x509.NameAttribute(NameOID.COMMON_NAME, "Steward dev CA"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    name: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    public = key.public_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANISATION),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(_expected_sans(name)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _expected_sans(name: str) -> list[x509.GeneralName]:
    return [x509.DNSName(name), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]


def _leaf_problem(name: str, cert: x509.Certificate, ca_cert: x509.Certificate, now: dt.datetime) -> str | None:
    """Why a stored leaf certificate must be re-issued, or None when it can be reused."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not issued by the current dev CA"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return "expires within 30 days"
    common_names = [attr.value for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if common_names != [name]:
        return "common name does not match"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "has no subject alternative names"
    if set(sans) != set(_expected_sans(name)):
        return "subject alternative names changed"
    return None


def ensure_dev_pki(tls_dir: Path, names: Sequence[str], *, now: dt.datetime | None = None) -> tuple[DevPki, list[str]]:
    """Make sure the CA and a certificate for each of ``names`` exist and are valid.

    Returns the PKI and a list of what was (re)created, for the launcher's log; an empty list means
    everything on disk was reused.
    """
    now = now or _now()
    tls_dir.mkdir(parents=True, exist_ok=True)
    tls_dir.chmod(0o700)
    actions: list[str] = []
    ca_file, ca_key_file = _paths(tls_dir, "ca")
    loaded_ca = _load_pair(ca_file, ca_key_file)
    if loaded_ca is None or loaded_ca[0].not_valid_after_utc - now < RENEW_BEFORE:
        ca_cert, ca_key = _create_ca(now)
        _write_pair(ca_file, ca_key_file, ca_cert, ca_key)
        actions.append("created dev CA" if loaded_ca is None else "renewed dev CA (it was about to expire)")
    else:
        ca_cert, ca_key = loaded_ca
    issued: dict[str, IssuedCertificate] = {}
    for name in names:
        cert_file, key_file = _paths(tls_dir, name)
        loaded = _load_pair(cert_file, key_file)
        problem = "missing" if loaded is None else _leaf_problem(name, loaded[0], ca_cert, now)
        if problem is not None:
            cert, key = _issue(name, ca_cert, ca_key, now)
            _write_pair(cert_file, key_file, cert, key)
            actions.append(f"issued certificate for {name}" + ("" if loaded is None else f" (old one {problem})"))
        issued[name] = IssuedCertificate(name=name, cert_file=cert_file, key_file=key_file)
    return DevPki(ca_file=ca_file, ca_key_file=ca_key_file, certificates=issued), actions


def inspect_certificate(
    name: str, cert_file: Path, ca_file: Path, *, key_file: Path | None = None, now: dt.datetime | None = None
) -> CertificateReport:
    """Check one certificate the way a TLS peer would: chain to the CA, validity window, key permissions.

    ``name`` "ca" inspects the CA itself. The server verifier from ``cryptography`` is used for
    leaves so a certificate that the services would reject is reported as invalid here too.
    """
    now = now or _now()
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        ca_cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
    except FileNotFoundError as exc:
        return CertificateReport(name, cert_file, False, None, f"missing: {exc.filename}")
    except (OSError, ValueError) as exc:
        return CertificateReport(name, cert_file, False, None, f"unreadable: {type(exc).__name__}")
    not_after = cert.not_valid_after_utc
    if not_after <= now:
        return CertificateReport(name, cert_file, False, not_after, "expired")
    if name != "ca":
        try:
            verifier = PolicyBuilder().store(Store([ca_cert])).time(now).build_server_verifier(DNSName(name))
            verifier.verify(cert, [])
        except VerificationError as exc:
            return CertificateReport(name, cert_file, False, not_after, f"does not verify against the dev CA: {exc}")
    if key_file is not None:
        if not key_file.exists():
            return CertificateReport(name, cert_file, False, not_after, f"key file missing: {key_file}")
        mode = key_file.stat().st_mode & 0o777
        if mode != 0o600:
            return CertificateReport(name, cert_file, False, not_after, f"key file mode is {mode:o}, expected 600")
    return CertificateReport(name, cert_file, True, not_after)
