"""Certificates that change on disk without a restart (cert-manager renews the Secret, kubelet swaps the files).

- :class:`CertificateFiles`: a certificate, its key and optionally a CA, watched together. The check is one
  ``os.stat`` per file (inode, mtime, size; kubelet's atomic ``..data`` symlink swap changes the inode), and
  the files are only read and parsed when that stamp moved.
- :class:`ReloadingServerCredentials`: ``grpc.dynamic_ssl_server_credentials`` with a fetcher gRPC consults on
  every new handshake. A new, valid pair is served from the next handshake on; connections already open keep
  theirs. A pair that does not load (half-written, key not matching the certificate) keeps the current one
  and counts a failure (logged once per stamp, exported as a metric).
- :class:`ReloadingChannel`: a client ``aio`` channel rebuilt with new credentials when its files change; the
  old channel drains (its calls in flight finish within a grace) and closes.
- :class:`ReloadingSslContext`: an ``ssl.SSLContext`` (the NATS client's) rebuilt when its files change; the
  owner hands the new context to whatever opens the next connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc import aio

from services.chassis.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("steward.tls")

__all__ = [
    "CertificateFiles",
    "CertificateMaterial",
    "ReloadingChannel",
    "ReloadingServerCredentials",
    "ReloadingSslContext",
]

Stamp = tuple[tuple[int, int, int] | None, ...]


@dataclass(frozen=True)
class CertificateMaterial:
    """One consistent read of the files: PEM bytes and the parsed leaf certificate."""

    cert_pem: bytes
    key_pem: bytes | None
    ca_pem: bytes | None
    certificate: x509.Certificate | None


@dataclass(frozen=True)
class CertificateFiles:
    """The files of one TLS identity: ``cert_file``/``key_file`` (either may be absent for a client that shows
    no certificate) and ``ca_file`` (the roots that verify the peer)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None

    def _paths(self) -> tuple[Path | None, ...]:
        return (self.cert_file, self.key_file, self.ca_file)

    def stamp(self) -> Stamp:
        """(inode, mtime ns, size) of each file, ``None`` for a missing one: changes whenever a file is replaced."""
        stamps: list[tuple[int, int, int] | None] = []
        for path in self._paths():
            try:
                info = os.stat(path) if path is not None else None
            except OSError:
                info = None
            stamps.append(None if info is None else (info.st_ino, info.st_mtime_ns, info.st_size))
        return tuple(stamps)

    def load(self) -> CertificateMaterial:
        """Read and check the files; ``ValueError`` (or ``OSError``) when they do not form a usable identity."""
        cert_pem = self.cert_file.read_bytes() if self.cert_file is not None else b""
        key_pem = self.key_file.read_bytes() if self.key_file is not None else None
        ca_pem = self.ca_file.read_bytes() if self.ca_file is not None else None
        certificate = None
        if self.cert_file is not None:
            certificate = x509.load_pem_x509_certificate(cert_pem)
        if key_pem is not None:
            key = serialization.load_pem_private_key(key_pem, password=None)
            if certificate is not None and key.public_key() != certificate.public_key():
                raise ValueError("the private key does not belong to the certificate")
        if ca_pem is not None:
            x509.load_pem_x509_certificates(ca_pem)
        return CertificateMaterial(cert_pem=cert_pem, key_pem=key_pem, ca_pem=ca_pem, certificate=certificate)


class _Reloader:
    """What server and client reloading share: the last good material, its stamp, and failure counting."""

    def __init__(self, name: str, files: CertificateFiles) -> None:
        self.name = name
        self.files = files
        self._stamp = files.stamp()
        self.material = files.load()  # at start-up a broken file is a configuration error: fail loudly
        self.reloads = 0
        self.failures = 0

    @property
    def certificate(self) -> x509.Certificate | None:
        """The certificate in use (what the expiry metric reports)."""
        return self.material.certificate

    def failed(self, exc: Exception) -> None:
        """Count and log files that changed but do not load (the current certificate stays in use)."""
        self.failures += 1
        log.error(
            "TLS files changed but do not load; keeping the current certificate",
            extra={"tls": self.name, "error": type(exc).__name__},
        )

    def changed(self) -> CertificateMaterial | None:
        """New material when the files changed and load cleanly; ``None`` when unchanged or broken (kept)."""
        stamp = self.files.stamp()
        if stamp == self._stamp:
            return None
        # Remember the stamp either way: a broken file is reported once, and retried when it changes again.
        self._stamp = stamp
        try:
            material = self.files.load()
        except (OSError, ValueError) as exc:
            self.failed(exc)
            return None
        self.material = material
        self.reloads += 1
        certificate = material.certificate
        log.info(
            "TLS files reloaded",
            extra={
                "tls": self.name,
                "not_after": certificate.not_valid_after_utc.isoformat() if certificate is not None else None,
            },
        )
        return material


class ReloadingServerCredentials(_Reloader):
    """Server credentials whose certificate, key and client CA are re-read when they change on disk."""

    def __init__(self, name: str, files: CertificateFiles, *, require_client_auth: bool) -> None:
        if files.cert_file is None or files.key_file is None:
            raise ValueError("a server needs both a certificate and a key file")
        super().__init__(name, files)
        self.require_client_auth = require_client_auth

    def _configuration(self, material: CertificateMaterial) -> grpc.ServerCertificateConfiguration:
        assert material.key_pem is not None
        return grpc.ssl_server_certificate_configuration(
            [(material.key_pem, material.cert_pem)], root_certificates=material.ca_pem
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher (called on each new handshake): a new configuration, or ``None`` to keep the current."""
        material = self.changed()
        return None if material is None else self._configuration(material)

    def credentials(self) -> grpc.ServerCredentials:
        """Dynamic credentials for ``add_secure_port``."""
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(self.material),
            self.fetch,
            require_client_authentication=self.require_client_auth,
        )


class ReloadingChannel(_Reloader):
    """A client channel to ``target`` that is rebuilt when its TLS files change.

    :meth:`get` checks the files at most every ``check_interval_s`` (by the injected clock) and returns the
    current channel; a replaced channel closes with ``drain_s`` grace, so calls already on it finish.
    Callers that cache multicallables must compare the channel they were built on with :meth:`get`.
    """

    def __init__(
        self,
        name: str,
        target: str,
        files: CertificateFiles,
        *,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[aio.ClientInterceptor] = (),
        clock: Clock = SYSTEM_CLOCK,
        check_interval_s: float = 1.0,
        drain_s: float = 60.0,
    ) -> None:
        super().__init__(name, files)
        self.target = target
        self._options = list(options)
        self._interceptors = list(interceptors)
        self._clock = clock
        self._check_interval_s = check_interval_s
        self._drain_s = drain_s
        self._checked_at = clock.monotonic()
        self._draining: set[asyncio.Task[None]] = set()
        self.channel = self._build(self.material)

    def _build(self, material: CertificateMaterial) -> aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=material.ca_pem,
            private_key=material.key_pem,
            certificate_chain=material.cert_pem if self.files.cert_file is not None else None,
        )
        return aio.secure_channel(self.target, credentials, options=self._options, interceptors=self._interceptors)

    def get(self) -> aio.Channel:
        """The channel to use now (a new one after the files changed)."""
        now = self._clock.monotonic()
        if now - self._checked_at < self._check_interval_s:
            return self.channel
        self._checked_at = now
        material = self.changed()
        if material is not None:
            old, self.channel = self.channel, self._build(material)
            task = asyncio.get_running_loop().create_task(old.close(self._drain_s))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)
        return self.channel

    async def close(self) -> None:
        """Close the current channel and wait for replaced ones to finish draining."""
        await self.channel.close()
        if self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)


class ReloadingSslContext(_Reloader):
    """A client ``ssl.SSLContext`` rebuilt by ``build`` (which reads the files itself) when its files change.

    ``ssl`` loads certificates only from paths, so ``build`` re-reads the files after :meth:`changed` has
    checked them; should they move again in between and not load, the current context is kept (a failure).
    """

    def __init__(self, name: str, files: CertificateFiles, build: Callable[[], ssl.SSLContext]) -> None:
        super().__init__(name, files)
        self._build = build
        self.context = build()

    def refresh(self) -> ssl.SSLContext | None:
        """A new context when the files changed and load; ``None`` when unchanged or broken (current kept)."""
        if self.changed() is None:
            return None
        try:
            context = self._build()
        except (OSError, ssl.SSLError) as exc:
            self.failed(exc)
            return None
        self.context = context
        return context
