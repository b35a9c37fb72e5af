"""A local SMTP sink (aiosmtpd) for ``steward run`` and the tests: it keeps what it receives in memory.

It speaks STARTTLS (mandatory) with a certificate from the dev CA, or implicit TLS, or — to show that notify
refuses it — plain SMTP without STARTTLS. ``script`` lets a test decide the reply per message: ``"ok"``,
``"4xx"`` (451 at RCPT), ``"5xx"`` (550 at RCPT) or ``"drop"`` (the connection is closed after the data, before
the reply: the sender cannot know whether the mail was taken). Received messages are kept as raw bytes, and
written to ``spool_dir/<n>.eml`` when one is given (``steward run``: ``.steward/mail/``).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections import deque
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller

__all__ = ["SmtpSink"]

Mode = Literal["starttls", "implicit", "plain"]


@dataclass
class _Handler:
    received: list[bytes] = field(default_factory=list)
    spool_dir: Path | None = None
    script: deque[str] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)
    attempts: int = 0

    def _next(self) -> str:
        with self.lock:
            return self.script.popleft() if self.script else "ok"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        with self.lock:
            self.attempts += 1
            step = self.script[0] if self.script else "ok"
        if step == "4xx":
            self._next()
            return "451 4.3.0 try again later"
        if step == "5xx":
            self._next()
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        step = self._next()
        with self.lock:
            self.received.append(bytes(envelope.content))
            if self.spool_dir is not None:
                path = self.spool_dir / f"{len(self.received):06d}.eml"
                path.write_bytes(bytes(envelope.content))
        if step == "drop":
            server.transport.close()
        return "250 OK queued"


class SmtpSink:
    """A running aiosmtpd sink; ``messages()`` parses what it received."""

    def __init__(
        self,
        *,
        mode: Mode = "starttls",
        cert_file: Path | None = None,
        key_file: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        spool_dir: Path | None = None,
    ) -> None:
        self.mode = mode
        self.spool_dir = spool_dir
        if spool_dir is not None:
            spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.handler = _Handler(spool_dir=spool_dir)
        tls = None
        if mode != "plain":
            if cert_file is None or key_file is None:
                raise ValueError("a TLS sink needs a certificate and key")
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(str(cert_file), str(key_file))
        kwargs: dict[str, Any] = {"hostname": host, "port": port or _free_port(host)}
        if mode == "starttls":
            kwargs.update(tls_context=tls, require_starttls=True)
            self.controller: Controller = Controller(self.handler, **kwargs)
        elif mode == "implicit":
            # TLS from the first byte (RFC 8314).
            self.controller = Controller(self.handler, ssl_context=tls, **kwargs)
        else:
            self.controller = Controller(self.handler, **kwargs)
        self.host = host
        self.port = int(kwargs["port"])

    def start(self) -> SmtpSink:
        """Start serving (in the controller's thread)."""
        self.controller.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.controller.stop()

    def script(self, *steps: str) -> None:
        """Replies for the next messages, in order ("ok", "4xx", "5xx", "drop"); then "ok"."""
        with self.handler.lock:
            self.handler.script.extend(steps)

    @property
    def attempts(self) -> int:
        """RCPT commands seen (every delivery attempt that got that far)."""
        with self.handler.lock:
            return self.handler.attempts

    def raw(self) -> list[bytes]:
        """Every message received, as sent."""
        with self.handler.lock:
            return list(self.handler.received)

    def messages(self) -> list[EmailMessage]:
        """Every message received, parsed."""
        return [message_from_bytes(raw, policy=policy.default) for raw in self.raw()]  # type: ignore[misc]


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
