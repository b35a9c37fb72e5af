"""``steward doctor``: is the local stack healthy, and if not, what to do about it.

Each check gives one row: ``ok``, ``warn`` (works, but act soon), ``fail`` or ``skip`` (could not be
checked because something it depends on failed). Any ``fail`` makes the command exit non-zero, so
runbooks and scripts can use it as a gate. Addresses come from ``.steward/run.json``, written by
``steward run``; doctor never guesses default ports, which could belong to somebody else's server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import json
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import grpc
import hvac
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.chassis.nats_config import embedded_seed_file
from services.chassis.nats_permissions import OPS, inbox_prefix
from services.cli.home import StewardHome
from services.cli.state import ServiceState, StackState
from services.devstack.catalog import CLI_IDENTITY, SERVICES
from services.devstack.devca import RENEW_BEFORE, inspect_certificate
from services.devstack.openbao import InitMaterial, OpenBaoSetupError, read_health

__all__ = ["Check", "exit_code", "render_json", "render_table", "run_checks"]

Status = Literal["ok", "warn", "fail", "skip"]
_TIMEOUT_S = 3.0


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
