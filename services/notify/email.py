"""The email channel: SMTP over TLS through a small pool of persistent sessions, classified into outcomes.

- TLS always: implicit TLS (RFC 8314, port 465) or STARTTLS that is mandatory — a server that does not offer it
  is refused (``REFUSED``/``no_starttls``), never used in clear. Certificates and host names are verified
  (against ``ca_file`` when configured). AUTH is sent only after TLS is up, by construction.
- Sessions are reused (:class:`SmtpSessionPool`): at most ``pool_size`` open at once, each opened once (connect,
  EHLO, STARTTLS, EHLO, AUTH) and then carrying one transaction after another (MAIL, RCPT, DATA), up to
  ``session_max_messages``. A session idle longer than ``session_check_after_s`` is checked with NOOP before it
  is used; one left mid-transaction by a refusal is reset with RSET; one the server closed (421, a lost
  connection) is dropped and replaced. A reused session that turns out dead *before* the data went out is
  replaced and the message tried once more on a fresh one (nothing can have been delivered); after the data went
  out, a loss is ``AMBIGUOUS``. The pool is closed (QUIT) at shutdown.
- The Message-ID is ours: ``<reference@domain>``, the same on every resend of a delivery, so a resent critical
  or service notice is recognisable downstream (at least once, deduplicated by Message-ID).
- Outcomes: 250 -> ``SENT``; 4xx -> ``RETRY`` (``smtp_4xx``); 5xx to the recipient or the data -> ``SUPPRESS``
  (``smtp_5xx``, a hard bounce); no connection -> ``RETRY`` (``smtp_connect``); a connection lost or timed out
  after the data went out -> ``AMBIGUOUS`` (``smtp_lost``); TLS verification or AUTH failures -> ``REFUSED``.
- ``List-Unsubscribe``/``List-Unsubscribe-Post`` come in ``message.headers`` from the engine (non-critical mail);
  headers are never folded here beyond what the email package needs (RFC 8058 one-click must survive DKIM).
- DKIM (optional, ``smtp.dkim``): each message is signed (dkimpy, RSA-SHA256, relaxed/relaxed) over From, To,
  Subject, Date, Message-ID, the List-Unsubscribe pair and the MIME headers. Bodies are always 7-bit
  (UTF-8 in quoted-printable, :func:`mime_message`), so no relay re-encodes what was signed.

No log line or result ``detail`` holds an address or any content of the message.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import secrets
import ssl
from collections import deque
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib
import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.settings import SettingsError
from services.notify.channels import Channel, Outcome, OutgoingMessage, SendResult
from services.notify.settings import DkimSettings, SmtpSettings

__all__ = ["DKIM_HEADERS", "DkimSigner", "EmailChannel", "SmtpSessionPool", "mime_message", "smtp_tls_context"]

log = logging.getLogger("steward.notify.email")

# What the signature covers. A listed header that a message lacks is signed as absent (no one can add it later).
DKIM_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
)
CRLF = "\r\n"
MIN_RSA_BITS = 1024  # RFC 8301: signers MUST use at least 1024 bits (2048 recommended)
# A server reply that means "this session is over" (RFC 5321 4.2.3: service closing transmission channel).
_CLOSING = 421


def smtp_tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    """A verifying client context (system roots, or ``ca_file``); TLS 1.2 at least."""
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _header(name: str, value: str) -> bytes:
    value = " ".join(value.split())  # one line: nothing a value holds can start another header
    if not value.isascii():
        # RFC 2047 encoded words, folded by the email package.
        return f"{name}: {Header(value, 'utf-8', header_name=name).encode(linesep=CRLF)}\r\n".encode("ascii")
    # Folded at spaces only, before 78 characters where a space allows it (a URL has none and stays whole, as
    # RFC 8058 one-click needs; lines may reach 998).
    lines, line = [], f"{name}:"
    for word in value.split(" "):
        if len(line) + 1 + len(word) > 76 and line != f"{name}:":
            lines.append(line)
            line = ""
        line = f"{line} {word}"
    lines.append(line)
    return (CRLF.join(lines) + CRLF).encode("ascii")


def _quoted_printable(text: str) -> bytes:
    data = text.replace("\r\n", "\n").encode("utf-8")
    return binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")


def mime_message(headers: list[tuple[str, str]], text: str, html: str = "") -> bytes:
    """The message as SMTP's DATA carries it (CRLF, 7-bit): ``headers``, then the text and, when given, an HTML
    alternative, each UTF-8 in quoted-printable.

    Written out directly rather than through :mod:`email`'s header registry (a third of a notice's CPU time).
    Every value is put on one line (RFC 2047 encoded when it is not ASCII); the multipart boundary starts with
    ``=_``, which quoted-printable text cannot contain, so no body can end its part early.
    """
    head = b"".join(_header(name, value) for name, value in headers) + b"MIME-Version: 1.0\r\n"
    text_part = b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n'
    if not html:
        return head + text_part + CRLF.encode() + _quoted_printable(text) + CRLF.encode()
    boundary = f"=_{secrets.token_hex(16)}".encode("ascii")
    html_part = b'Content-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n'
    return b"".join(
        [
            head,
            b'Content-Type: multipart/alternative;\r\n boundary="' + boundary + b'"\r\n\r\n',
            b"--" + boundary + b"\r\n" + text_part + b"\r\n" + _quoted_printable(text) + b"\r\n",
            b"--" + boundary + b"\r\n" + html_part + b"\r\n" + _quoted_printable(html) + b"\r\n",
            b"--" + boundary + b"--\r\n",
        ]
    )


class DkimSigner:
    """Signs flattened messages with the configured RSA key; a bad key or setting fails at start-up."""

    def __init__(self, settings: DkimSettings, default_domain: str) -> None:
        prefix = "STEWARD_NOTIFY__SMTP__DKIM__"
        self.selector = settings.selector.encode("ascii")
        self.domain = (settings.domain or default_domain).encode("ascii")
        if not self.domain:
            raise SettingsError(f"DKIM needs a signing domain: set {prefix}DOMAIN")
        try:
            pem = settings.private_key_file.read_bytes()
        except OSError as exc:
            raise SettingsError(
                f"DKIM private key file cannot be read ({type(exc).__name__}): check {prefix}PRIVATE_KEY_FILE"
            ) from None
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < MIN_RSA_BITS:
            raise SettingsError(
                f"DKIM private key file is not an unencrypted RSA private key (PEM, at least {MIN_RSA_BITS} bits): "
                f"check {prefix}PRIVATE_KEY_FILE"
            )
        # dkimpy reads PKCS#1 ("RSA PRIVATE KEY"); the file may be PKCS#8 (what openssl genpkey writes).
        self.private_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        self.headers = [name.lower().encode("ascii") for name in DKIM_HEADERS]

    def sign(self, message: bytes) -> bytes:
        """``message`` with its DKIM-Signature header in front."""
        signature = dkim.sign(
            message,
            self.selector,
            self.domain,
            self.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=self.headers,
            linesep=b"\r\n",
        )
        return signature + message


class _Unusable(Exception):
    """A session could not be opened: the outcome says why."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(result.reason)
        self.result = result


@dataclass
class _Session:
    smtp: aiosmtplib.SMTP
    messages: int = 0
    idle_since: float = 0.0
    # The last transaction did not end cleanly (a refusal): RSET before the next one.
    dirty: bool = False


class SmtpSessionPool:
    """At most ``pool_size`` open, authenticated sessions to one relay, handed out one caller at a time."""

    def __init__(self, settings: SmtpSettings, tls_context: ssl.SSLContext, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.tls_context = tls_context
        self.clock = clock
        self._idle: deque[_Session] = deque()
        # Held for a whole send (its retries included): at most pool_size sessions are ever open.
        self.slots = asyncio.Semaphore(settings.pool_size)
        self._closed = False
        # Sessions opened so far (tests and the benchmark read it: reuse means few).
        self.opened = 0

    @property
    def idle(self) -> int:
        """Open sessions waiting for a message."""
        return len(self._idle)

    async def acquire(self) -> tuple[_Session, bool]:
        """A session for one transaction: (session, reused). Call with a slot held; raises :class:`_Unusable`."""
        while self._idle:
            session = self._idle.pop()  # the most recently used: the likeliest to be alive
            if not session.smtp.is_connected:
                continue
            if await self._healthy(session):
                return session, True
            await self._discard(session)
        return await self._open(), False

    async def release(self, session: _Session, *, reusable: bool) -> None:
        """Give a session back (kept for the next message) or close it."""
        session.messages += 1
        if (
            self._closed
            or not reusable
            or not session.smtp.is_connected
            or session.messages >= self.settings.session_max_messages
        ):
            await self._discard(session)
            return
        session.idle_since = self.clock.monotonic()
        self._idle.append(session)

    async def close(self) -> None:
        """QUIT every idle session; sessions in use are closed when they come back."""
        self._closed = True
        while self._idle:
            await self._discard(self._idle.pop())

    async def _healthy(self, session: _Session) -> bool:
        smtp = session.smtp
        try:
            if session.dirty:
                await smtp.rset()
                session.dirty = False
            elif self.clock.monotonic() - session.idle_since > self.settings.session_check_after_s:
                await smtp.noop()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            return False
        return True

    async def _open(self) -> _Session:
        settings = self.settings
        implicit = settings.tls == "implicit"
        smtp = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            use_tls=implicit,
            start_tls=False,
            validate_certs=True,
            tls_context=self.tls_context,
            timeout=settings.timeout_s,
        )
        try:
            await self._handshake(smtp, implicit)
        except _Unusable:
            await _quit(smtp)
            raise
        self.opened += 1
        return _Session(smtp)

    async def _handshake(self, smtp: aiosmtplib.SMTP, implicit: bool) -> None:
        settings = self.settings
        try:
            await smtp.connect()
            await smtp.ehlo()
        except ssl.SSLError:
            raise _Unusable(_TLS_VERIFY) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise _Unusable(_connect_failure(exc)) from None
        if not implicit:
            if not smtp.supports_extension("starttls"):
                raise _Unusable(SendResult(Outcome.REFUSED, "no_starttls", detail="the server does not offer STARTTLS"))
            try:
                await smtp.starttls()
            except ssl.SSLError:
                raise _Unusable(_TLS_VERIFY) from None
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                raise _Unusable(_connect_failure(exc)) from None
        if settings.username:
            # Only here, with TLS up: implicit from the first byte or after a successful STARTTLS.
            try:
                await smtp.login(settings.username, settings.password.get_secret_value())
            except aiosmtplib.SMTPAuthenticationError:
                raise _Unusable(
                    SendResult(Outcome.REFUSED, "smtp_auth", detail="the relay refused our credentials")
                ) from None
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                raise _Unusable(_connect_failure(exc)) from None

    async def _discard(self, session: _Session) -> None:
        await _quit(session.smtp)


_TLS_VERIFY = SendResult(Outcome.REFUSED, "tls_verify", detail="the server's certificate did not verify")


class EmailChannel(Channel):
    """Sends :class:`OutgoingMessage` by SMTP with aiosmtplib; see the module docstring for the outcomes."""

    name = "email"

    def __init__(
        self, settings: SmtpSettings, *, tls_context: ssl.SSLContext | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.tls_context = tls_context or smtp_tls_context(settings)
        self.domain = settings.message_id_domain or settings.from_address.rpartition("@")[2] or "steward.invalid"
        self.signer = DkimSigner(settings.dkim, settings.from_address.rpartition("@")[2]) if settings.dkim else None
        self.pool = SmtpSessionPool(settings, self.tls_context, clock=clock)

    def build(self, message: OutgoingMessage) -> EmailMessage:
        """The message as the relay receives it, parsed (for inspection; sends use :meth:`wire_bytes`)."""
        parsed = message_from_bytes(self.wire_bytes(message)[0], policy=policy.default)
        return parsed  # type: ignore[return-value]  # policy.default parses into an EmailMessage

    def wire_bytes(self, message: OutgoingMessage) -> tuple[bytes, str]:
        """(the bytes DATA carries, DKIM-signed when configured; the Message-ID)."""
        message_id = f"<{message.reference}@{self.domain}>"
        headers = [
            ("From", self.settings.from_address),
            ("To", message.recipient),
            ("Subject", message.subject),
            ("Date", format_datetime(self.clock.now(), usegmt=True)),
            ("Message-ID", message_id),
            *message.headers.items(),
        ]
        data = mime_message(headers, message.text_body or message.subject, message.html_body)
        if self.signer is not None:
            data = self.signer.sign(data)
        return data, message_id

    async def send(self, message: OutgoingMessage) -> SendResult:
        """One SMTP transaction on a pooled session; never raises for SMTP or network trouble (it is an outcome)."""
        data, message_id = self.wire_bytes(message)
        async with self.pool.slots:
            while True:
                try:
                    session, reused = await self.pool.acquire()
                except _Unusable as refused:
                    return refused.result
                result, reusable, stale = await self._transaction(session, message.recipient, data, message_id)
                await self.pool.release(session, reusable=reusable)
                if not (stale and reused):
                    return result
                # A reused session had died while idle, before the data went out: nothing was delivered, and it
                # is gone now, so this ends on a fresh session at the latest.

    async def _transaction(
        self, session: _Session, recipient: str, data: bytes, message_id: str
    ) -> tuple[SendResult, bool, bool]:
        """(outcome, session reusable, session was dead before the data went out)."""
        smtp = session.smtp
        try:
            await smtp.mail(self.settings.from_address)
            await smtp.rcpt(recipient)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError, TimeoutError):
            # Nothing was transferred: the message is not on the server.
            return SendResult(Outcome.RETRY, "smtp_connect", detail="the session ended before the data"), False, True
        except aiosmtplib.SMTPResponseException as exc:
            # Sender or recipient refused: the code decides; the envelope is reset before the session's next use.
            session.dirty = True
            return self._by_code(exc.code, "recipient"), exc.code != _CLOSING, exc.code == _CLOSING
        try:
            await smtp.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            session.dirty = True
            return self._by_code(exc.code, "transaction"), exc.code != _CLOSING, False
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError, TimeoutError):
            lost = SendResult(
                Outcome.AMBIGUOUS, "smtp_lost", detail="the connection was lost before the server confirmed"
            )
            return lost, False, False
        return SendResult(Outcome.SENT, "smtp_250", provider_ref=message_id), True, False

    @staticmethod
    def _by_code(code: int, stage: str) -> SendResult:
        if 400 <= code < 500:
            return SendResult(Outcome.RETRY, "smtp_4xx", detail=f"temporary {stage} refusal {code}")
        if 500 <= code < 600:
            return SendResult(Outcome.SUPPRESS, "smtp_5xx", detail=f"permanent {stage} refusal {code}")
        return SendResult(Outcome.AMBIGUOUS, "smtp_unexpected", detail=f"unexpected reply {code}")

    async def close(self) -> None:
        """Close the pooled sessions (QUIT)."""
        await self.pool.close()


def _connect_failure(exc: BaseException) -> SendResult:
    code = getattr(exc, "code", 0)
    if isinstance(code, int) and 500 <= code < 600:
        return SendResult(Outcome.REFUSED, "smtp_refused", detail=f"the relay refused the session ({code})")
    return SendResult(Outcome.RETRY, "smtp_connect", detail=f"no session with the relay ({type(exc).__name__})")


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    if not smtp.is_connected:
        return
    try:
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        smtp.close()
