"""Faults injected into the running stack, one at a time, the way an operator's bad day would.

Each :class:`Fault` has ``inject`` (do the damage) and ``end`` (wait until the damage is over: the
supervisor has restarted the killed child and it is ready again, OpenBao is unsealed, the frozen vault is
thawed). The campaign measures recovery from the moment ``end`` returns to the first acknowledged write.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa

from tests.plugins.waiting import eventually
from tests.system.harness.stack import SystemStack, process_state

__all__ = ["FAULTS", "Fault", "faults_for"]


async def _port_open(port: int) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


@dataclass(frozen=True)
class Fault:
    """One fault: ``inject`` then ``end``; ``postgres_only`` faults are skipped on SQLite."""

    name: str
    inject: Callable[[SystemStack], Awaitable[dict[str, object]]]
    end: Callable[[SystemStack, dict[str, object]], Awaitable[None]]
    postgres_only: bool = False


def kill9(process: str) -> Fault:
    """SIGKILL ``process``; over once the supervisor has a new one up, listening (and OpenBao unsealed)."""

    async def inject(stack: SystemStack) -> dict[str, object]:
        pid = stack.pids()[process]
        os.kill(pid, signal.SIGKILL)
        return {"pid": pid}

    async def end(stack: SystemStack, memo: dict[str, object]) -> None:
        port = stack.port_of(process)

        async def back() -> bool:
            pid = stack.pids().get(process)
            if pid is None or pid == memo["pid"] or not await _port_open(port):
                return False
            return process != "openbao" or await stack.openbao_sealed() is False

        await eventually(back, 120, what=f"{process} restarted by the supervisor")

    return Fault(f"kill -9 {process}", inject, end)


def seal_openbao(hold_s: float) -> Fault:
    """Seal OpenBao for ``hold_s`` seconds, then unseal it with the key in ``init.json``."""

    async def inject(stack: SystemStack) -> dict[str, object]:
        await stack.seal_openbao()
        return {}

    async def end(stack: SystemStack, _memo: dict[str, object]) -> None:
        await asyncio.sleep(hold_s)  # the fault's duration, not a wait for a condition
        await stack.unseal_openbao()
        await eventually(lambda: _is_false(stack.openbao_sealed()), 30, what="OpenBao unsealed")

    return Fault("seal+unseal openbao", inject, end)


async def _is_false(value: Awaitable[bool | None]) -> bool:
    return (await value) is False


def freeze(process: str, hold_s: float) -> Fault:
    """SIGSTOP ``process`` for ``hold_s`` (past the callers' deadlines), then SIGCONT."""

    async def inject(stack: SystemStack) -> dict[str, object]:
        pid = stack.pids()[process]
        os.kill(pid, signal.SIGSTOP)
        return {"pid": pid}

    async def end(stack: SystemStack, memo: dict[str, object]) -> None:
        pid = int(str(memo["pid"]))
        await asyncio.sleep(hold_s)  # the fault's duration: longer than any caller's deadline
        os.kill(pid, signal.SIGCONT)
        await eventually(lambda: process_state(pid) not in ("T", "t"), 10, what=f"{process} running again")

    return Fault(f"SIGSTOP {process} {hold_s:g}s", inject, end)


def terminate_pg_connections() -> Fault:
    """``pg_terminate_backend`` every connection to the stack's databases (PostgreSQL only)."""

    async def inject(stack: SystemStack) -> dict[str, object]:
        def terminate() -> int:
            from tests.plugins.infra import POSTGRES_ADMIN_URL

            admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as conn:
                    rows = conn.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = ANY(:names) AND pid <> pg_backend_pid()"
                        ),
                        {"names": stack.pg_databases},
                    ).all()
                return len(rows)
            finally:
                admin.dispose()

        return {"terminated": await asyncio.to_thread(terminate)}

    async def end(_stack: SystemStack, _memo: dict[str, object]) -> None:
        return None  # instantaneous: the pools must notice and reconnect on their own

    return Fault("pg_terminate_backend", inject, end, postgres_only=True)


def faults_for(*, freeze_s: float, seal_s: float) -> list[Fault]:
    """Every fault of the full run, in the order it injects them."""
    return [
        kill9("nats"),
        kill9("vault"),
        kill9("gateway"),
        kill9("dsr"),
        kill9("notify"),
        kill9("openbao"),
        seal_openbao(seal_s),
        freeze("vault", freeze_s),
        terminate_pg_connections(),
    ]


FAULTS = faults_for
