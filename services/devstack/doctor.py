"""``steward doctor``: is the local stack healthy, and if not, what to do about it.

Each check gives one row: ``ok``, ``warn`` (works, but act soon), ``fail`` or ``skip`` (could not be
checked because something it depends on failed). Any ``fail`` makes the command exit non-zero, so
runbooks and scripts can use it as a gate. Addresses come from ``.steward/run.json``, written by
``steward run``; doctor never guesses default ports, which could belong to somebody else's server.

``steward doctor --kube`` checks a deployed Steward instead (:func:`run_cluster_checks`): the STEWARD stream's
replicas, consumer lag, dead-letter depth, every OpenBao node's seal state, outbox age and certificate expiry
from the services' ``/metrics``, and database health. Endpoints come from the ``steward-doctor`` ConfigMap when
``kubectl`` can read it, and from flags (which win). It exits like a monitoring check (:func:`check_exit_code`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import json
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
import hvac
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.chassis.bus import DLQ_PREFIX
from services.chassis.nats_config import embedded_seed_file
from services.chassis.nats_permissions import OPS, inbox_prefix
from services.cli.home import StewardHome
from services.cli.nats_ops import NatsEndpoint, NatsUnreachable, connect_ops
from services.cli.state import ServiceState, StackState
from services.devstack.catalog import CLI_IDENTITY, SERVICES
from services.devstack.devca import RENEW_BEFORE, inspect_certificate
from services.devstack.openbao import InitMaterial, OpenBaoSetupError, read_health

__all__ = [
    "CERT_WARN_BEFORE",
    "Check",
    "ClusterEndpoints",
    "check_exit_code",
    "discover_with_kubectl",
    "endpoints_from_configmap",
    "exit_code",
    "render_json",
    "render_table",
    "run_checks",
    "run_cluster_checks",
]

Status = Literal["ok", "warn", "fail", "skip"]
_TIMEOUT_S = 3.0
CERT_WARN_BEFORE = dt.timedelta(days=14)
"""A served certificate closer to expiry than this is a warning (the StewardCertificateExpiringSoon alert's)."""


@dataclass(frozen=True)
class Check:
    """One row of the doctor's report."""

    name: str
    status: Status
    detail: str


def _launcher_holds_lock(home: StewardHome) -> bool:
    """True while a ``steward run`` holds the home lock (more reliable than a pid, which can be reused)."""
    if not home.lock_file.exists():
        return False
    with open(home.lock_file) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def check_launcher(home: StewardHome, state: StackState | None) -> Check:
    """Is a ``steward run`` using this home?"""
    start = f"start it with `steward run --home {home.root}`"
    if state is None and _launcher_holds_lock(home):
        return Check("stack", "fail", "`steward run` is still starting (no run.json yet); run doctor again shortly")
    if state is None:
        detail = f"no stack state at {home.state_file}: the stack never ran with this home; {start}"
        return Check("stack", "fail", detail)
    if _launcher_holds_lock(home):
        return Check("stack", "ok", f"`steward run` is running (pid {state.pid}, since {state.started_at})")
    if not state.running:
        return Check("stack", "fail", f"stopped cleanly at {state.stopped_at}; {start}")
    return Check("stack", "fail", f"the launcher (pid {state.pid}) is gone without stopping cleanly; {start}")


async def check_nats(url: str, *, seed_file: Path | None = None, ca_file: Path | None = None) -> Check:
    """Can we connect (as the operators' NATS user, over TLS when a CA is given), and is JetStream enabled?"""
    import ssl

    import nats
    from nats.js.errors import Error as JetStreamError

    async def quiet(_error: Exception) -> None:
        """nats-py reports connection errors through this callback too; the check reports them once."""

    if seed_file is not None and not await asyncio.to_thread(seed_file.exists):
        return Check("nats", "fail", f"no operator NATS key at {seed_file}; restart `steward run`, which creates it")
    try:
        # nats-py retries the first connect forever unless max_reconnect_attempts is positive (0 = unlimited);
        # the outer timeout is a second guard so the doctor never hangs on a dead stack.
        connection = await asyncio.wait_for(
            nats.connect(
                url,
                connect_timeout=_TIMEOUT_S,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
                error_cb=quiet,
                nkeys_seed=str(seed_file) if seed_file is not None else None,
                inbox_prefix=inbox_prefix(OPS),
                tls=ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else None,
            ),
            _TIMEOUT_S * 2,
        )
    except Exception as exc:
        return Check("nats", "fail", f"cannot connect to {url} ({type(exc).__name__}); is `steward run` up?")
    try:
        info = await connection.jetstream(timeout=_TIMEOUT_S).account_info()
    except (JetStreamError, TimeoutError) as exc:
        return Check("nats", "fail", f"{url} is up but JetStream does not answer ({type(exc).__name__})")
    finally:
        await connection.close()
    return Check("nats", "ok", f"{url} reachable, JetStream enabled ({info.streams} streams)")


def check_openbao(url: str) -> Check:
    """Is OpenBao initialised, unsealed and active?"""
    try:
        health = read_health(url, timeout_s=_TIMEOUT_S)
    except (requests.RequestException, OpenBaoSetupError) as exc:
        return Check("openbao", "fail", f"no answer from {url} ({type(exc).__name__}); is `steward run` up?")
    if not health.get("initialized"):
        return Check("openbao", "fail", f"{url} is not initialised; restart `steward run`, which initialises it")
    if health.get("sealed"):
        return Check(
            "openbao",
            "fail",
            f"{url} is SEALED: every Transit call fails; restart `steward run` (it unseals with the key in "
            "init.json) or run `bao operator unseal` with that key",
        )
    if health.get("standby"):
        return Check("openbao", "warn", f"{url} is unsealed but standby (no active node yet); re-check in a moment")
    return Check("openbao", "ok", f"{url} unsealed and active (OpenBao {health.get('version', '?')})")


def check_transit(url: str, init_file: Path, mount: str) -> Check:
    """Is the root token valid and the Transit engine mounted?"""
    if init_file.exists() and init_file.stat().st_mode & 0o777 != 0o600:
        return Check("transit", "fail", f"{init_file} must be mode 600 (it holds the root token): chmod 600 it")
    try:
        material = InitMaterial.load(init_file)
        client = hvac.Client(url=url, token=material.root_token, timeout=_TIMEOUT_S)
        mounts = client.sys.list_mounted_secrets_engines()["data"]
    except OpenBaoSetupError as exc:
        return Check("transit", "fail", str(exc))
    except hvac.exceptions.Forbidden:
        return Check("transit", "fail", f"the root token in {init_file} is rejected by {url}")
    except (hvac.exceptions.VaultError, requests.RequestException) as exc:
        return Check("transit", "fail", f"cannot list mounts at {url} ({type(exc).__name__})")
    if f"{mount}/" not in mounts:
        return Check("transit", "fail", f"Transit is not mounted at {mount}/; restart `steward run`, which mounts it")
    return Check("transit", "ok", f"mounted at {mount}/ (token from {init_file})")


def check_certificates(home: StewardHome, now: dt.datetime) -> list[Check]:
    """Dev CA and every identity certificate: chain, expiry, key file permissions."""
    ca_file = home.tls_dir / "ca.crt"
    if not ca_file.exists():
        return [Check("tls", "fail", f"no dev CA at {ca_file}; `steward run` creates it")]
    checks = []
    for name in ["ca", *(entry.name for entry in SERVICES), CLI_IDENTITY]:
        report = inspect_certificate(
            name, home.tls_dir / f"{name}.crt", ca_file, key_file=home.tls_dir / f"{name}.key", now=now
        )
        left = report.expires_in(now)
        if not report.valid:
            detail = f"{report.problem}; restart `steward run` to re-issue (or delete {home.tls_dir} to start over)"
            checks.append(Check(f"tls:{name}", "fail", detail))
        elif left is not None and left < RENEW_BEFORE:
            checks.append(Check(f"tls:{name}", "warn", f"expires in {left.days} days; restart `steward run` to renew"))
        else:
            until = report.not_after.date().isoformat() if report.not_after else "?"
            days = left.days if left is not None else "?"
            checks.append(Check(f"tls:{name}", "ok", f"valid until {until} ({days} days)"))
    return checks


def check_operator_token(home: StewardHome, now: dt.datetime) -> Check:
    """The dev IdP's operator token: present, 0600, signed by the key the gateway trusts, not (nearly) expired."""
    import jwt

    from services.devstack.devidp import verify_with_jwks

    token_file, jwks_file = home.idp_dir / "operator.jwt", home.idp_dir / "jwks.json"
    renew = "run `steward token mint --save` (or restart `steward run`)"
    if not token_file.exists():
        return Check("operator-token", "fail", f"no dev operator token at {token_file}; `steward run` mints one")
    if token_file.stat().st_mode & 0o777 != 0o600:
        return Check("operator-token", "fail", f"{token_file} must be mode 600 (it is a bearer token): chmod 600 it")
    try:
        claims = verify_with_jwks(token_file.read_text().strip(), jwks_file, now=now)
    except jwt.ExpiredSignatureError:
        return Check("operator-token", "fail", f"{token_file} has expired; {renew}")
    except (jwt.PyJWTError, OSError, ValueError) as exc:
        return Check("operator-token", "fail", f"{token_file} does not verify against {jwks_file} ({exc}); {renew}")
    left = dt.datetime.fromtimestamp(float(str(claims["exp"])), dt.UTC) - now
    raw_roles = claims.get("roles")
    roles = ", ".join(str(role) for role in raw_roles) if isinstance(raw_roles, list) and raw_roles else "no roles"
    detail = f"{roles} as {claims['sub']}, expires in {left.seconds // 3600}h{left.seconds % 3600 // 60:02d}m (dev IdP)"
    if left < dt.timedelta(hours=1):
        return Check("operator-token", "warn", f"{detail}; {renew}")
    return Check("operator-token", "ok", detail)


def check_databases(home: StewardHome, state: StackState | None) -> list[Check]:
    """Every started service's SQLite database(s) exist."""
    if state is None:
        return [Check("databases", "skip", "the stack never ran with this home")]
    entries = [entry for entry in SERVICES if entry.name in state.services]
    if not entries:
        return [Check("databases", "skip", "no Steward service was started (none installed, or all skipped)")]
    checks = []
    for entry in entries:
        if not state.services[entry.name].database_url.startswith("sqlite"):
            # On a server (steward run --database or the service's own variable): its health check covers it.
            checks.append(Check(f"db:{entry.name}", "skip", f"{state.services[entry.name].database_url} (not SQLite)"))
            continue
        for file_name in entry.database_files().values():
            path, row = home.database_file(file_name), f"db:{file_name.removesuffix('.db')}"
            if path.exists():
                checks.append(Check(row, "ok", f"{path} ({path.stat().st_size} bytes)"))
            else:
                detail = f"{path} is missing: {entry.name} has not started with this home yet"
                checks.append(Check(row, "fail", detail))
    return checks


async def check_service(name: str, service: ServiceState, state: StackState) -> Check:
    """gRPC health of one service over mTLS, as the CLI identity (health is open to any dev-CA client)."""
    try:
        root, key, chain = await asyncio.to_thread(
            lambda: tuple(Path(p).read_bytes() for p in (state.ca_file, state.cli_key_file, state.cli_cert_file))
        )
        credentials = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)
    except OSError as exc:
        return Check(f"grpc:{name}", "fail", f"cannot read the CLI certificate ({exc.strerror}: {exc.filename})")
    async with grpc.aio.secure_channel(service.address, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return Check(f"grpc:{name}", "fail", f"{service.address} health check failed: {exc.code().name}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return Check(f"grpc:{name}", "fail", f"{service.address} reports {status}")
    return Check(f"grpc:{name}", "ok", f"{service.address} {status}")


async def run_checks(home: StewardHome, *, now: dt.datetime | None = None) -> list[Check]:
    """Every check, in the order a runbook would walk them."""
    now = now or dt.datetime.now(dt.UTC)
    state = StackState.read(home.state_file)
    checks = [check_launcher(home, state)]
    if state is None:
        unknown = "address unknown: no run.json (start the stack first)"
        checks += [Check(name, "skip", unknown) for name in ("nats", "openbao", "transit")]
    else:
        ops_seed = embedded_seed_file(home.nats_dir, OPS)
        checks.append(await check_nats(state.nats_url, seed_file=ops_seed, ca_file=Path(state.ca_file)))
        openbao = await asyncio.to_thread(check_openbao, state.openbao_url)
        checks.append(openbao)
        if openbao.status == "fail":
            checks.append(Check("transit", "skip", "OpenBao is not usable"))
        else:
            init_file = Path(state.openbao_init_file)
            checks.append(await asyncio.to_thread(check_transit, state.openbao_url, init_file, state.transit_mount))
    checks += check_certificates(home, now)
    if state is not None and state.operator_token_file is not None:
        checks.append(check_operator_token(home, now))
    checks += check_databases(home, state)
    if state is not None and checks[0].status == "ok":
        probes: list[Awaitable[Check]] = [check_service(name, svc, state) for name, svc in state.services.items()]
        checks += await asyncio.gather(*probes)
    elif state is not None:
        checks += [Check(f"grpc:{name}", "skip", "the stack is not running") for name in state.services]
    return checks


def exit_code(checks: list[Check]) -> int:
    """1 when any check failed, else 0 (warnings do not fail)."""
    return 1 if any(check.status == "fail" for check in checks) else 0


def render_table(checks: list[Check]) -> str:
    """A fixed-width table for terminals and runbook pastes."""
    width = max(len("CHECK"), *(len(check.name) for check in checks))
    lines = [f"{'CHECK':<{width}}  STATUS  DETAIL"]
    lines += [f"{check.name:<{width}}  {check.status.upper():<6}  {check.detail}" for check in checks]
    failed = sum(check.status == "fail" for check in checks)
    lines.append(f"{failed} check(s) failed; see docs/runbooks/local-stack.md" if failed else "all checks passed")
    return "\n".join(lines)


def render_json(home: StewardHome, checks: list[Check]) -> str:
    """One JSON object: overall verdict plus every row."""
    return json.dumps(
        {"ok": exit_code(checks) == 0, "home": str(home.root), "checks": [asdict(check) for check in checks]}
    )


# --------------------------------------------------------------------------- steward doctor --kube

CHECK_OK, CHECK_WARNING, CHECK_CRITICAL, CHECK_UNKNOWN = 0, 1, 2, 3
"""``steward doctor --kube`` exits like a monitoring check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""

DOCTOR_CONFIGMAP = "steward-doctor"
"""The ConfigMap ``--kube`` reads endpoints from (keys: nats_url, stream, min_replicas, openbao_urls,
metrics_urls; lists comma-separated). Database URLs hold passwords: they come from flags or the environment."""


@dataclass(frozen=True)
class ClusterEndpoints:
    """What ``steward doctor --kube`` checks and its thresholds."""

    nats: NatsEndpoint | None = None
    stream: str = "STEWARD"
    min_replicas: int = 3
    max_lag: int = 1000
    max_outbox_age_s: float = 300.0
    openbao_urls: tuple[str, ...] = ()
    metrics_urls: tuple[str, ...] = ()
    database_urls: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing to check (no flags, no ConfigMap)."""
        return self.nats is None and not (self.openbao_urls or self.metrics_urls or self.database_urls)


def endpoints_from_configmap(data: dict[str, str]) -> dict[str, object]:
    """The ``steward-doctor`` ConfigMap's ``data`` as :class:`ClusterEndpoints` fields (unknown keys ignored)."""

    def items(key: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in data.get(key, "").split(",") if part.strip())

    found: dict[str, object] = {}
    if data.get("nats_url"):
        found["nats_url"] = data["nats_url"].strip()
    if data.get("stream"):
        found["stream"] = data["stream"].strip()
    if data.get("min_replicas", "").strip().isdigit():
        found["min_replicas"] = int(data["min_replicas"])
    if items("openbao_urls"):
        found["openbao_urls"] = items("openbao_urls")
    if items("metrics_urls"):
        found["metrics_urls"] = items("metrics_urls")
    return found


def discover_with_kubectl(namespace: str, name: str = DOCTOR_CONFIGMAP) -> tuple[dict[str, object], Check]:
    """Endpoints from the cluster's ConfigMap through ``kubectl`` (current context), and a row saying what happened."""
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return {}, Check("kube", "skip", "kubectl is not installed: endpoints come from the flags only")
    try:
        result = subprocess.run(
            [kubectl, "-n", namespace, "get", "configmap", name, "-o", "json", "--request-timeout=10s"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        return {}, Check("kube", "skip", "kubectl did not answer in time: endpoints come from the flags only")
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or ["no answer"])[-1][:200]
        return {}, Check("kube", "skip", f"no configmap/{name} in {namespace} ({why}): using the flags only")
    try:
        data = json.loads(result.stdout).get("data") or {}
    except ValueError:
        return {}, Check("kube", "warn", f"configmap/{name} is not readable JSON: using the flags only")
    return endpoints_from_configmap(data), Check("kube", "ok", f"endpoints from configmap/{name} in {namespace}")


async def check_stream(js: Any, endpoints: ClusterEndpoints) -> list[Check]:
    """Stream replicas against the declared minimum, consumer lag, and the dead-letter depth."""
    from nats.js.errors import NotFoundError

    name = endpoints.stream
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        return [Check("stream", "fail", f"no stream {name}: run `steward nats apply` (or the Job)")]
    replicas = info.config.num_replicas or 1
    checks = []
    if replicas < endpoints.min_replicas:
        detail = f"{name} has {replicas} replica(s), fewer than the declared {endpoints.min_replicas}: a node loss "
        checks.append(Check("stream", "fail", detail + "can lose acknowledged events"))
    else:
        checks.append(Check("stream", "ok", f"{name}: {replicas} replica(s), {info.state.messages} messages"))
    for consumer in await js.consumers_info(name):
        lag = int(consumer.num_pending or 0) + int(consumer.num_ack_pending or 0)
        row = f"lag:{consumer.name}"
        detail = f"{consumer.num_pending} pending, {consumer.num_ack_pending} unacknowledged"
        if lag > endpoints.max_lag:
            checks.append(Check(row, "warn", f"{detail} (over {endpoints.max_lag}): docs/runbooks/nats-lagging.md"))
        else:
            checks.append(Check(row, "ok", detail))
    letters = await js.stream_info(name, subjects_filter=f"{DLQ_PREFIX}>")
    by_subject = letters.state.subjects or {}
    depth = sum(by_subject.values())
    if depth:
        counts = ", ".join(
            f"{subject.removeprefix(DLQ_PREFIX)} {count}" for subject, count in sorted(by_subject.items())
        )
        checks.append(Check("dlq", "warn", f"{depth} dead letter(s) ({counts}): `steward dlq list`"))
    else:
        checks.append(Check("dlq", "ok", "no dead letters"))
    return checks


async def check_cluster_nats(endpoint: NatsEndpoint, endpoints: ClusterEndpoints) -> list[Check]:
    """Connect as ops, then :func:`check_stream`."""
    from nats.errors import Error as NatsError

    try:
        connection = await connect_ops(endpoint)
    except NatsUnreachable as exc:
        return [Check("nats", "fail", str(exc))]
    try:
        return [
            Check("nats", "ok", f"{endpoint.url} reachable as ops"),
            *await check_stream(connection.jetstream(timeout=_TIMEOUT_S), endpoints),
        ]
    except (NatsError, TimeoutError) as exc:
        return [Check("stream", "skip", f"JetStream did not answer ({type(exc).__name__}); are these ops credentials?")]
    finally:
        await connection.close()


def check_openbao_node(url: str) -> Check:
    """One OpenBao node's seal state (every raft node, not only the active one)."""
    check = check_openbao(url)
    detail = check.detail.replace("; is `steward run` up?", "").replace(
        "restart `steward run` (it unseals with the key in init.json) or run `bao operator unseal` with that key",
        "unseal it (auto-unseal, or `bao operator unseal`): docs/runbooks/vault-sealed.md",
    )
    return Check(f"openbao:{url}", check.status, detail)


def check_metrics(url: str, endpoints: ClusterEndpoints) -> list[Check]:
    """Outbox age and certificate expiry from one service's ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        response = requests.get(url, timeout=_TIMEOUT_S)
        response.raise_for_status()
    except requests.RequestException as exc:
        return [Check(f"metrics:{url}", "fail", f"cannot scrape ({type(exc).__name__})")]
    ages: list[float] = []
    expiries: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "steward_outbox_oldest_age_seconds":
                ages.append(sample.value)
            elif sample.name == "steward_tls_certificate_expiry_seconds":
                expiries[sample.labels.get("certificate", "?")] = sample.value
    checks = []
    if ages:
        age = max(ages)
        status: Status = "warn" if age > endpoints.max_outbox_age_s else "ok"
        checks.append(Check(f"outbox:{url}", status, f"oldest unpublished event {age:.0f} s old"))
    for name, seconds in sorted(expiries.items()):
        days = seconds / 86400
        if seconds <= 0:
            status, detail = "fail", "EXPIRED: docs/runbooks/certificate-expiry.md"
        elif dt.timedelta(seconds=seconds) < CERT_WARN_BEFORE:
            status, detail = "warn", f"expires in {days:.1f} days: docs/runbooks/certificate-expiry.md"
        else:
            status, detail = "ok", f"expires in {days:.0f} days"
        checks.append(Check(f"cert:{name}@{url}", status, detail))
    return checks or [Check(f"metrics:{url}", "warn", "no outbox or certificate series: is this a Steward service?")]


def check_database(url: str) -> Check:
    """Connect and ``SELECT 1`` (the password is never shown)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return Check("db:?", "fail", "not a database URL (postgresql+psycopg://user@host/db)")
    engine = create_engine(url, connect_args={"connect_timeout": int(_TIMEOUT_S)} if "postgresql" in url else {})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return Check(f"db:{shown}", "fail", f"cannot connect ({type(exc).__name__}): docs/runbooks/db-down.md")
    finally:
        engine.dispose()
    return Check(f"db:{shown}", "ok", "answers SELECT 1")


async def run_cluster_checks(endpoints: ClusterEndpoints) -> list[Check]:
    """Every cluster check, in runbook order: NATS (stream, lag, dead letters), OpenBao nodes, services, databases."""
    checks: list[Check] = []
    if endpoints.nats is not None:
        checks += await check_cluster_nats(endpoints.nats, endpoints)
    checks += await asyncio.gather(*(asyncio.to_thread(check_openbao_node, url) for url in endpoints.openbao_urls))
    for url in endpoints.metrics_urls:
        checks += await asyncio.to_thread(check_metrics, url, endpoints)
    checks += await asyncio.gather(*(asyncio.to_thread(check_database, url) for url in endpoints.database_urls))
    return checks


def check_exit_code(checks: list[Check]) -> int:
    """Monitoring-check status: CRITICAL on any fail, else WARNING on any warn, else UNKNOWN on a skip, else OK."""
    statuses = {check.status for check in checks if check.name != "kube"}
    if "fail" in statuses:
        return CHECK_CRITICAL
    if "warn" in statuses:
        return CHECK_WARNING
    if "skip" in statuses:
        return CHECK_UNKNOWN
    return CHECK_OK
