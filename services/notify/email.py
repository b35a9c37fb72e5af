"""The email channel: one message per SMTP transaction over TLS, classified into the channel contract's outcomes.

- TLS always: implicit TLS (RFC 8314, port 465) or STARTTLS that is mandatory — a server that does not offer it
  is refused (``REFUSED``/``no_starttls``), never used in clear. Certificates and host names are verified
  (against ``ca_file`` when configured). AUTH is sent only after TLS is up, by construction.
- The Message-ID is ours: ``<reference@domain>``, the same on every resend of a delivery, so a resent critical
  or service notice is recognisable downstream (at least once, deduplicated by Message-ID).
- Outcomes: 250 -> ``SENT``; 4xx -> ``RETRY`` (``smtp_4xx``); 5xx to the recipient or the data -> ``SUPPRESS``
  (``smtp_5xx``, a hard bounce); no connection -> ``RETRY`` (``smtp_connect``); a connection lost or timed out
  after the data went out -> ``AMBIGUOUS`` (``smtp_lost``); TLS verification or AUTH failures -> ``REFUSED``.
- ``List-Unsubscribe``/``List-Unsubscribe-Post`` come in ``message.headers`` from the engine (non-critical mail);
  headers are never folded here beyond what the email package needs (RFC 8058 one-click must survive DKIM).

No log line or result ``detail`` holds an address or any content of the message.
"""

from __future__ import annotations

import logging
import ssl
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from services.notify.channels import Channel, Outcome, OutgoingMessage, SendResult
from services.notify.settings import SmtpSettings

__all__ = ["EmailChannel", "smtp_tls_context"]

log = logging.getLogger("steward.notify.email")


def smtp_tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    """A verifying client context (system roots, or ``ca_file``); TLS 1.2 at least."""
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class EmailChannel(Channel):
    """Sends :class:`OutgoingMessage` by SMTP with aiosmtplib; see the module docstring for the outcomes."""

    name = "email"

    def __init__(self, settings: SmtpSettings, *, tls_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self.tls_context = tls_context or smtp_tls_context(settings)
        self.domain = settings.message_id_domain or settings.from_address.rpartition("@")[2] or "steward.invalid"

    def build(self, message: OutgoingMessage) -> EmailMessage:
        """The MIME message (text and, when given, an HTML alternative)."""
        mail = EmailMessage()
        mail["From"] = self.settings.from_address
        mail["To"] = message.recipient
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(usegmt=True)
        mail["Message-ID"] = f"<{message.reference}@{self.domain}>"
        for name, value in message.headers.items():
            mail[name] = value
        mail.set_content(message.text_body or message.subject)
        if message.html_body:
            mail.add_alternative(message.html_body, subtype="html")
        return mail

    async def send(self, message: OutgoingMessage) -> SendResult:
        """One SMTP transaction; never raises for SMTP or network trouble (it is an outcome)."""
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
            try:
                await smtp.connect()
                await smtp.ehlo()
            except ssl.SSLError:
                return SendResult(Outcome.REFUSED, "tls_verify", detail="the server's certificate did not verify")
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                return self._connect_failure(exc)
            if not implicit:
                if not smtp.supports_extension("starttls"):
                    return SendResult(Outcome.REFUSED, "no_starttls", detail="the server does not offer STARTTLS")
                try:
                    await smtp.starttls()
                except ssl.SSLError:
                    return SendResult(Outcome.REFUSED, "tls_verify", detail="the server's certificate did not verify")
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    return self._connect_failure(exc)
            if settings.username:
                try:
                    await smtp.login(settings.username, settings.password.get_secret_value())
                except aiosmtplib.SMTPAuthenticationError:
                    return SendResult(Outcome.REFUSED, "smtp_auth", detail="the relay refused our credentials")
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    return self._connect_failure(exc)
            return await self._transaction(smtp, message)
        finally:
            await self._quit(smtp)

    async def _transaction(self, smtp: aiosmtplib.SMTP, message: OutgoingMessage) -> SendResult:
        mail = self.build(message)
        try:
            errors, _reply = await smtp.send_message(mail)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [e.code for e in exc.recipients]
            return self._by_code(min(codes) if codes else 550, "recipient")
        except aiosmtplib.SMTPResponseException as exc:
            # Sender refused, data refused, or a server-side error reply: the code decides.
            return self._by_code(exc.code, "transaction")
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError, TimeoutError):
            return SendResult(
                Outcome.AMBIGUOUS, "smtp_lost", detail="the connection was lost before the server confirmed"
            )
        if errors:
            return self._by_code(min(code for code, _ in errors.values()), "recipient")
        return SendResult(Outcome.SENT, "smtp_250", provider_ref=str(mail["Message-ID"]))

    @staticmethod
    def _by_code(code: int, stage: str) -> SendResult:
        if 400 <= code < 500:
            return SendResult(Outcome.RETRY, "smtp_4xx", detail=f"temporary {stage} refusal {code}")
        if 500 <= code < 600:
            return SendResult(Outcome.SUPPRESS, "smtp_5xx", detail=f"permanent {stage} refusal {code}")
        return SendResult(Outcome.AMBIGUOUS, "smtp_unexpected", detail=f"unexpected reply {code}")

    @staticmethod
    def _connect_failure(exc: BaseException) -> SendResult:
        code = getattr(exc, "code", 0)
        if isinstance(code, int) and 500 <= code < 600:
            return SendResult(Outcome.REFUSED, "smtp_refused", detail=f"the relay refused the session ({code})")
        return SendResult(Outcome.RETRY, "smtp_connect", detail=f"no session with the relay ({type(exc).__name__})")

    @staticmethod
    async def _quit(smtp: aiosmtplib.SMTP) -> None:
        if not smtp.is_connected:
            return
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            smtp.close()

    async def close(self) -> None:
        """Nothing pooled: each send has its own session."""
