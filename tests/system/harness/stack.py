"""The whole stack as ``steward run`` starts it, seen from outside: processes, credentials, databases, NATS.

:class:`SystemStack` starts one ``steward run --json`` on a home of its own (SQLite, or PostgreSQL with
databases named for this run so parallel runs never share one), and then reads only what an operator
could read: ``run.json`` and the launcher's children in ``/proc`` (the supervisor restarts a killed child
under a new pid, which ``run.json`` does not follow), ``demo.json`` for the demo tenant's API key,
``openbao/init.json`` for the unseal key, the ``ops`` nkey seed for the STEWARD stream, and each
service's database URL from the state file.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from services.chassis.nats_config import embedded_seed_file
from services.chassis.nats_permissions import OPS, inbox_prefix
from services.cli.state import StackState
from services.client import RetryPolicy, StewardClient
from services.devstack.catalog import SERVICES
from tests.integration.cli.launcher import Launcher
from tests.plugins.infra import POSTGRES_ADMIN_URL

__all__ = ["PROCESSES", "SystemStack", "pg_server_url", "process_state", "rss_kib"]

PROCESSES = ("nats", "openbao", *(entry.name for entry in SERVICES))
"""Every child the supervisor may run, by the name the report uses."""


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``VmRSS``), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (R, S, T, Z, ...), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return None


def _child_name(argv: list[str]) -> str | None:
    """Which stack process a command line is (``nats-server``, ``bao server``, ``python -m services.<x>.main``)."""
    if not argv:
        return None
    program = Path(argv[0]).name
    if program == "nats-server":
        return "nats"
    if program == "bao" and "server" in argv[1:]:
        return "openbao"
    if "-m" in argv:
        module = argv[argv.index("-m") + 1] if argv.index("-m") + 1 < len(argv) else ""
        for entry in SERVICES:
            if entry.module == module:
                return entry.name
    return None


def pg_server_url() -> str:
    """The PostgreSQL server of the test fixtures, without a database (``postgresql://user@host:port``)."""
    url = sa.engine.make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql", database=None)
    return url.render_as_string(hide_password=False)


@dataclass
class SystemStack:
    """One ``steward run`` for the system suite; ``database`` is ``sqlite`` or ``postgresql``."""

    root: Path
    database: str = "sqlite"
    launcher: Launcher | None = None
    state: StackState | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    pg_databases: list[str] = field(default_factory=list)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 180) -> SystemStack:
        """Start the stack and wait for its ready line; PostgreSQL databases get names unique to this run."""
        self.root.mkdir(parents=True, exist_ok=True)
        # A crashed notify's in-flight sends are taken up again when their lease lapses (120 s by default); the
        # stack shortens it so a kill -9 of notify settles within the accounting's wait.
        env: dict[str, str] = {"STEWARD_NOTIFY__DELIVERY__SENDING_LEASE_S": "20"}
        args: tuple[str, ...] = ()
        if self.database == "postgresql":
            server = pg_server_url()
            run = uuid.uuid4().hex[:8]
            # The user's own variables win over --database (finding 6), so each run names its databases and
            # never collides with another run (or test) that uses the fixed --database names.
            names = {
                "STEWARD_VAULT__DATABASE_URL": f"steward_sys_{run}_vault",
                "STEWARD_VAULT__TOMBSTONE_DATABASE_URL": f"steward_sys_{run}_tombstones",
                "STEWARD_GATEWAY__DATABASE_URL": f"steward_sys_{run}_gateway",
                "STEWARD_DSR__DATABASE_URL": f"steward_sys_{run}_dsr",
                "STEWARD_NOTIFY__DATABASE_URL": f"steward_sys_{run}_notify",
            }
            base = sa.engine.make_url(server).set(drivername="postgresql+psycopg")
            env |= {var: base.set(database=name).render_as_string(hide_password=False) for var, name in names.items()}
            self.pg_databases = list(names.values())
            args = (f"--database={server}",)
        self.launcher = Launcher(self.root / "home", self.root / "stack.log", extra_args=args, env=env)
        self.summary = self.launcher.start(timeout_s=timeout_s)
        if not self.summary.get("demo") or not self.summary["demo"].get("api_key"):
            raise AssertionError(f"stack up without a demo API key: {self.summary.get('demo_problem')}")
        self.state = StackState.model_validate({k: v for k, v in self.summary.items() if k in StackState.model_fields})
        return self

    def stop(self) -> None:
        """Stop the launcher (and so every child) and drop this run's PostgreSQL databases."""
        if self.launcher is not None:
            self.launcher.kill_everything()
        if self.pg_databases:
            admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as conn:
                    for name in self.pg_databases:
                        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            finally:
                admin.dispose()

    # -- what an operator can see ------------------------------------------------------------------------------

    @property
    def home(self) -> Path:
        """The stack's home folder."""
        assert self.launcher is not None
        return self.launcher.home

    @property
    def gateway_address(self) -> str:
        """``host:port`` of the gateway."""
        assert self.state is not None
        return self.state.services["gateway"].address

    @property
    def api_key(self) -> str:
        """The demo tenant's API key (``demo.json``)."""
        return str(json.loads((self.home / "demo.json").read_text())["api_key"])

    @property
    def ca_file(self) -> Path:
        """The dev CA every certificate of the stack chains to."""
        assert self.state is not None
        return Path(self.state.ca_file)

    def pids(self) -> dict[str, int]:
        """The live pid of each child of the launcher, by name (follows the supervisor's restarts)."""
        assert self.launcher is not None and self.launcher.proc is not None
        parent = self.launcher.proc.pid
        found: dict[str, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(") ", 1)[1].split()
                if int(fields[1]) != parent or fields[0] == "Z":
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    argv = [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
            except (OSError, IndexError, ValueError):
                continue
            name = _child_name(argv)
            if name is not None:
                found[name] = int(entry)
        return found

    def rss(self) -> dict[str, tuple[int, int | None]]:
        """``{name: (pid, VmRSS KiB)}`` of every running child."""
        return {name: (pid, rss_kib(pid)) for name, pid in sorted(self.pids().items())}

    def port_of(self, name: str) -> int:
        """The port a child listens on (what its supervisor checks for readiness)."""
        assert self.state is not None
        if name == "nats":
            return int(self.state.nats_url.rsplit(":", 1)[1])
        if name == "openbao":
            return int(self.state.openbao_url.rsplit(":", 1)[1])
        return self.state.services[name].port

    def database_urls(self) -> dict[str, str]:
        """Each service's main database (the one holding its outbox), by service name."""
        assert self.state is not None
        urls = {name: service.database_url for name, service in self.state.services.items()}
        if self.database == "postgresql":
            # run.json hides passwords; the fixture server uses trust auth, and the psycopg driver is installed.
            urls = {
                name: str(sa.engine.make_url(url).set(drivername="postgresql+psycopg").render_as_string(False))
                for name, url in urls.items()
            }
        return urls

    @contextmanager
    def engine(self, service: str) -> Iterator[sa.Engine]:
        """A short-lived SQLAlchemy engine on ``service``'s database (reading behind the stack's back)."""
        engine = sa.create_engine(self.database_urls()[service])
        try:
            yield engine
        finally:
            engine.dispose()

    # -- clients -----------------------------------------------------------------------------------------------

    def client(
        self, *, timeout_s: float = 5.0, retry: RetryPolicy | None = None, interceptors: Sequence[Any] = ()
    ) -> StewardClient:
        """A :class:`StewardClient` for the demo tenant over TLS with the dev CA (idempotency keys, retries)."""
        return StewardClient(
            self.gateway_address,
            self.api_key,
            ca_file=self.ca_file,
            timeout_s=timeout_s,
            retry=retry,
            interceptors=interceptors,
        )

    async def ops_nats(self) -> Any:
        """A NATS connection as the operators' ``ops`` user (the only one that may read the whole stream)."""
        import nats

        assert self.state is not None
        return await nats.connect(
            self.state.nats_url,
            connect_timeout=3,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            nkeys_seed=str(embedded_seed_file(self.home / "nats", OPS)),
            inbox_prefix=inbox_prefix(OPS),
            tls=ssl.create_default_context(cafile=str(self.ca_file)),
            error_cb=_quiet,
        )

    # -- OpenBao -----------------------------------------------------------------------------------------------

    def _openbao(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.state is not None
        init = json.loads((self.home / "openbao" / "init.json").read_text())
        request = urllib.request.Request(
            f"{self.state.openbao_url}/v1/{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"X-Vault-Token": init["root_token"]},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            raw = response.read()
        return json.loads(raw) if raw else {}

    async def openbao_sealed(self) -> bool | None:
        """True/False from ``sys/seal-status``; None when OpenBao does not answer."""
        try:
            return bool((await asyncio.to_thread(self._openbao, "GET", "sys/seal-status"))["sealed"])
        except OSError:
            return None

    async def seal_openbao(self) -> None:
        """Seal OpenBao (root token from ``init.json``): Transit stops answering until unsealed."""
        await asyncio.to_thread(self._openbao, "PUT", "sys/seal")

    async def unseal_openbao(self) -> None:
        """Unseal OpenBao with the dev unseal key from ``init.json``."""
        key = json.loads((self.home / "openbao" / "init.json").read_text())["unseal_keys_b64"][0]
        await asyncio.to_thread(self._openbao, "PUT", "sys/unseal", {"key": key})


async def _quiet(_exc: Exception) -> None:
    """nats-py reports connection errors through a callback as well as by raising; the raise is enough."""
