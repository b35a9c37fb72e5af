"""The one test harness: real nats-server, OpenBao, SQLite and PostgreSQL, started on free ports.

Loaded for every run through ``addopts = -p tests.plugins.infra``. Processes are started by the
fixtures themselves so a test can kill and restart them. PostgreSQL is the machine's server at
127.0.0.1:5432 (override with ``STEWARD_TEST_POSTGRES_URL``); each test gets a fresh database.
When it is unreachable the PostgreSQL tests skip locally and *fail* under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
POSTGRES_ADMIN_URL = os.environ.get("STEWARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


_HANDED_OUT: set[int] = set()
_LOWEST_CHOSEN_PORT = 15000


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux default 32768-60999)."""
    try:
        low, high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port nobody listens on right now, below the ephemeral range and never handed out twice.

    A port from ``bind(0)`` comes from the ephemeral range, so any outgoing connection the suite makes
    (PostgreSQL, NATS, OpenBao clients) can take it between this choice and the server's own bind: a
    nats-server once exited with "address already in use" that way. Ports below that range are only
    taken by servers that ask for them, and this process never hands the same one out twice.
    """
    low, _ = _ephemeral_range()
    if low - _LOWEST_CHOSEN_PORT >= 1000:
        chooser = random.Random()
        for _ in range(500):
            port = chooser.randrange(_LOWEST_CHOSEN_PORT, low)
            if port not in _HANDED_OUT and _bindable(port):
                _HANDED_OUT.add(port)
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    _HANDED_OUT.add(port)
    return port


def wait_for_port(port: int, timeout_s: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout_s}s")


@dataclass
class NatsServer:
    """A real nats-server with JetStream; ``restart`` keeps its port and store so durable state survives."""

    store_dir: Path
    port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    config_file: Path | None = None  # when set, it alone configures the server (listen, store, TLS, users)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.store_dir / "nats.log", "ab")
        if self.config_file is not None:
            argv = ["-c", str(self.config_file)]
        else:
            argv = ["-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)]
        self.proc = subprocess.Popen(
            [str(BIN / "nats-server"), *argv, "-m", str(self.monitor_port), *self.extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.port, proc=self.proc)
        except RuntimeError as exited:
            tail = (self.store_dir / "nats.log").read_text(errors="replace").splitlines()[-5:]
            raise RuntimeError(f"{exited}; nats.log ends: {' | '.join(tail)}") from exited

    def subscribers(self, subject: str) -> int:
        """How many connections subscribe to exactly ``subject`` now (the server's monitoring endpoint)."""
        url = f"http://127.0.0.1:{self.monitor_port}/subsz?subs=1&test={subject}"
        with urllib.request.urlopen(url, timeout=5) as reply:
            subscriptions = json.load(reply).get("subscriptions_list", [])
        return len({sub["cid"] for sub in subscriptions if sub["subject"] == subject})

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


@dataclass
class SecuredNats:
    """A nats-server configured like ``steward run``'s: nkey users from the permission table, TLS, no anonymous."""

    server: NatsServer
    seed_files: dict[str, Path]
    ca_file: Path

    @property
    def url(self) -> str:
        return self.server.url

    async def connect(self, user: str, errors: list[str]) -> Any:
        """A raw nats-py client as ``user`` over TLS; errors the server reports (permissions) go to ``errors``."""
        import ssl

        import nats

        from services.chassis.nats_permissions import inbox_prefix

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        return await nats.connect(
            self.url,
            nkeys_seed=str(self.seed_files[user]),
            tls=ssl.create_default_context(cafile=str(self.ca_file)),
            inbox_prefix=inbox_prefix(user),
            allow_reconnect=False,
            error_cb=on_error,
        )

    def settings(self, user: str, **fields: Any) -> Any:
        """``NatsSettings`` connecting as ``user`` (its seed, TLS against the dev CA)."""
        from services.chassis.settings import NatsSettings

        return NatsSettings(url=self.url, nkey_seed_file=self.seed_files[user], tls_ca_file=self.ca_file, **fields)


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[SecuredNats]:
    """A fresh nats-server started from the generated config (``services.chassis.nats_config``)."""
    from services.chassis.nats_config import ServerTls, ensure_embedded_nats
    from services.devstack.devca import ensure_dev_pki

    pki, _ = ensure_dev_pki(tmp_path / "tls", ["nats"])
    store = tmp_path / "nats"
    store.mkdir()
    port = free_port()
    tls = ServerTls(cert_file=pki["nats"].cert_file, key_file=pki["nats"].key_file, ca_file=pki.ca_file)
    embedded = ensure_embedded_nats(tmp_path / "nats-auth", host="127.0.0.1", port=port, store_dir=store, tls=tls)
    server = NatsServer(store_dir=store, port=port, config_file=embedded.config_file)
    server.start()
    try:
        yield SecuredNats(server=server, seed_files=dict(embedded.seed_files), ca_file=pki.ca_file)
    finally:
        server.kill()


@dataclass
class OpenBaoDev:
    """``bao server -dev`` (in memory) with the Transit engine enabled. Killing it loses every key."""

    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: f"root-{uuid.uuid4().hex}")
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                str(BIN / "bao"),
                "server",
                "-dev",
                f"-dev-root-token-id={self.token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "BAO_ADDR": self.url, "HOME": os.environ.get("HOME", "/tmp")},
        )
        wait_for_port(self.port, proc=self.proc)
        import hvac

        client = hvac.Client(url=self.url, token=self.token)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.sys.is_initialized() and not client.sys.is_sealed():
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
        if "transit/" not in client.sys.list_mounted_secrets_engines()["data"]:
            client.sys.enable_secrets_engine("transit", path="transit")

    def stop(self) -> None:
        """SIGSTOP-free hard stop: the dev server's data is gone with it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections hang, like a partitioned Transit."""
        assert self.proc is not None
        self.proc.send_signal(subprocess.signal.SIGSTOP)  # type: ignore[attr-defined]

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(subprocess.signal.SIGCONT)  # type: ignore[attr-defined]

    def seal(self) -> None:
        import hvac

        hvac.Client(url=self.url, token=self.token).sys.seal()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server (JetStream, store under tmp_path) that the test may kill and restart."""
    store = tmp_path / "nats"
    store.mkdir()
    server = NatsServer(store_dir=store)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBaoDev]:
    """One OpenBao dev server for the session (tests that stop it use ``openbao_private``)."""
    server = OpenBaoDev()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def openbao_private() -> Iterator[OpenBaoDev]:
    """An OpenBao dev server this test alone uses, free to stop, pause or seal."""
    server = OpenBaoDev()
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.resume()
        server.stop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file of this test's own."""
    return f"sqlite:///{tmp_path / 'steward.db'}"


def _postgres_reachable() -> str | None:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    problem = _postgres_reachable()
    if problem is not None:
        message = f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {problem}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (required under CI=true)")
        pytest.skip(message)
    import sqlalchemy as sa

    name = f"steward_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/unit are ``unit``, under tests/integration ``integration``."""
    for item in items:
        path = str(item.fspath)
        if f"{os.sep}unit{os.sep}" in path:
            item.add_marker(pytest.mark.unit)
        elif f"{os.sep}integration{os.sep}" in path:
            item.add_marker(pytest.mark.integration)


def which(name: str) -> str:
    """Path of a tool installed in the virtualenv (nats-server, bao)."""
    return str(BIN / name) if (BIN / name).exists() else (shutil.which(name) or name)
