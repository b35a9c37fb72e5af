"""Child processes of ``steward run``: start, wait until ready, prefix their logs, restart on crash, stop in order.

Each child runs in its own session so a Ctrl-C in the terminal reaches only the launcher, which then
stops the children itself, in reverse start order (SIGTERM, wait, SIGKILL). On Linux a child also gets
SIGTERM if the launcher dies without cleaning up (``PR_SET_PDEATHSIG``), so a killed launcher does
not leave a JetStream store or raft directory locked by an orphan.

A child that crashes is restarted after an exponential backoff (reset once it has stayed up for a
while); every restart is logged, and the child's ``on_ready`` hook (OpenBao's unseal) runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import os
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Backoff", "ChildFailedToStart", "ChildSpec", "Supervisor", "inherited_environment", "write_line"]

_OUTPUT_LIMIT = 1 << 20  # longest child log line we keep whole
_RECENT_LINES = 30  # kept per child to explain a failed start


def write_line(line: str) -> None:
    """Write one log line to stderr (stdout is reserved for the summary)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class ChildFailedToStart(RuntimeError):
    """A child exited or did not become ready in time; the message carries its last log lines."""


@dataclass(frozen=True)
class ChildSpec:
    """How to run one child and how to tell that it is ready."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    ready_port: tuple[str, int] | None = None
    """Ready once something accepts TCP connections here (and the process is still ours and alive)."""
    ready_line: str | None = None
    """...and once a line containing this text has appeared in its output."""
    on_ready: Callable[[], Awaitable[None]] | None = None
    """Runs after every (re)start once the child is ready, e.g. to unseal OpenBao."""


@dataclass(frozen=True)
class Backoff:
    """Delay before restarting a crashed child: ``initial_s * 2**n``, capped, reset after ``stable_s`` of uptime."""

    initial_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 60.0

    def delay(self, consecutive_failures: int) -> float:
        """Seconds to wait before restart number ``consecutive_failures`` (1-based)."""
        return float(min(self.max_s, self.initial_s * 2 ** max(0, consecutive_failures - 1)))


@dataclass
class _Child:
    spec: ChildSpec
    process: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None
    watcher: asyncio.Task[None] | None = None
    started_at: float = 0.0
    failures: int = 0
    ready_line_seen: asyncio.Event = field(default_factory=asyncio.Event)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=_RECENT_LINES))


_PR_SET_PDEATHSIG = 1


@functools.cache
def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking the kernel to SIGTERM the child when the launcher dies (Linux only).

    libc is loaded here, in the launcher, so the hook that runs between fork and exec only calls an
    already-resolved C function.
    """
    libc_name = ctypes.util.find_library("c") if sys.platform == "linux" else None
    if not libc_name:
        return None
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


async def _port_accepts(address: tuple[str, int]) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), 0.5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class Supervisor:
    """Owns the stack's child processes for the lifetime of one ``steward run``."""

    def __init__(
        self,
        *,
        ready_timeout_s: float,
        stop_grace_s: float,
        backoff: Backoff,
        log: Callable[[str], None] = write_line,
    ) -> None:
        self._ready_timeout_s = ready_timeout_s
        self._stop_grace_s = stop_grace_s
        self._backoff = backoff
        self._log = log
        self._children: list[_Child] = []
        self._stopping = False

    def note(self, message: str) -> None:
        """Log a line of the launcher's own (``[steward] ...``)."""
        self._log(f"[steward] {message}")

    def pids(self) -> dict[str, int]:
        """Process id of every child currently running, by name."""
        return {
            child.spec.name: child.process.pid
            for child in self._children
            if child.process is not None and child.process.returncode is None
        }

    async def start(self, spec: ChildSpec) -> int:
        """Start ``spec``, wait until it is ready and keep it running from then on. Returns its pid.

        Raises ChildFailedToStart when it exits early or is not ready within the timeout; the child
        is then stopped, and so it is not restarted.
        """
        child = _Child(spec)
        self._children.append(child)
        try:
            await self._launch(child)
        except BaseException:
            await self._terminate(child)
            self._children.remove(child)
            raise
        child.watcher = asyncio.create_task(self._keep_running(child), name=f"supervise-{spec.name}")
        assert child.process is not None
        return child.process.pid

    async def stop_all(self) -> None:
        """Stop every child, last started first: SIGTERM, ``stop_grace_s``, then SIGKILL."""
        self._stopping = True
        for child in self._children:
            if child.watcher is not None:
                child.watcher.cancel()
        for child in self._children:
            if child.watcher is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await child.watcher
        for child in reversed(self._children):
            await self._terminate(child)
        self._children.clear()

    async def _launch(self, child: _Child) -> None:
        spec = child.spec
        child.ready_line_seen.clear()
        loop = asyncio.get_running_loop()
        child.process = await asyncio.create_subprocess_exec(
            *spec.argv,
            env=dict(spec.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent_hook(),
            limit=_OUTPUT_LIMIT,
        )
        child.started_at = loop.time()
        child.pump = asyncio.create_task(self._pump_output(child, child.process), name=f"logs-{spec.name}")
        await self._wait_ready(child, child.process)
        if spec.on_ready is not None:
            await spec.on_ready()

    async def _wait_ready(self, child: _Child, process: asyncio.subprocess.Process) -> None:
        spec = child.spec
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout_s
        while True:
            if process.returncode is not None:
                raise ChildFailedToStart(self._failure(child, f"exited with code {process.returncode} before ready"))
            line_ok = spec.ready_line is None or child.ready_line_seen.is_set()
            port_ok = spec.ready_port is None or await _port_accepts(spec.ready_port)
            # Re-check liveness: a child that failed to bind exits, while the port may belong to someone else.
            if line_ok and port_ok and process.returncode is None:
                return
            if loop.time() > deadline:
                raise ChildFailedToStart(self._failure(child, f"not ready after {self._ready_timeout_s:.0f}s"))
            await asyncio.sleep(0.05)

    def _failure(self, child: _Child, what: str) -> str:
        tail = "\n".join(f"    {line}" for line in child.recent) or "    (no output)"
        return f"{child.spec.name} {what}; its last output:\n{tail}"

    async def _pump_output(self, child: _Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        prefix = f"[{child.spec.name}] "
        while True:
            try:
                raw = await process.stdout.readline()
            except ValueError:
                # A line longer than the limit: asyncio already dropped it; keep reading the next ones.
                self._log(prefix + "(overlong log line skipped)")
                continue
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\r\n")
            child.recent.append(line)
            if child.spec.ready_line is not None and child.spec.ready_line in line:
                child.ready_line_seen.set()
            self._log(prefix + line)

    async def _keep_running(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        while True:
            assert child.process is not None
            code = await child.process.wait()
            if child.pump is not None:
                await child.pump
            if self._stopping:
                return
            uptime = loop.time() - child.started_at
            child.failures = 1 if uptime >= self._backoff.stable_s else child.failures + 1
            delay = self._backoff.delay(child.failures)
            name, attempt = child.spec.name, child.failures
            self.note(f"{name} exited with code {code}; restarting in {delay:.1f}s (attempt {attempt})")
            await asyncio.sleep(delay)
            try:
                await self._launch(child)
            except ChildFailedToStart as exc:
                self.note(f"restart of {exc}")
                await self._terminate(child, quiet=True)
            except Exception as exc:
                # on_ready failed (say OpenBao would not unseal): a half-ready child is worse than a restart.
                self.note(f"{child.spec.name} restarted but its setup failed: {exc}")
                await self._terminate(child, quiet=True)
            else:
                self.note(f"{child.spec.name} is back (pid {child.process.pid})")

    async def _terminate(self, child: _Child, *, quiet: bool = False) -> None:
        process = child.process
        if process is not None and process.returncode is None:
            if not quiet:
                self.note(f"stopping {child.spec.name} (pid {process.pid})")
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self._stop_grace_s)
            except TimeoutError:
                self.note(f"{child.spec.name} ignored SIGTERM for {self._stop_grace_s:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if child.pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await child.pump


def inherited_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The launcher's environment plus ``extra``, with Python children writing their logs unbuffered."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
