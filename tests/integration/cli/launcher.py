"""Runs ``steward run`` as a real subprocess for the CLI tests: free ports, JSON summary, logs in a file."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.devstack.catalog import SERVICES
from tests.plugins.infra import free_port

__all__ = ["Launcher", "pid_alive", "run_cli"]


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def run_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m services.cli.main <args>`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True, timeout=timeout_s
    )


@dataclass
class Launcher:
    """One ``steward run --json`` process on ``home``, every port explicit and free."""

    home: Path
    log_file: Path
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    """Variables added to this process's environment for the launcher (and so its children)."""
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def start(self, timeout_s: float = 90) -> dict[str, Any]:
        """Start it and return the parsed ``ready`` summary; raises with the log tail when it fails."""
        self.ports = {"nats": free_port(), "openbao": free_port(), "openbao_cluster": free_port(), "idp": free_port()}
        self.ports |= {entry.name: free_port() for entry in SERVICES}
        argv = [
            sys.executable,
            "-m",
            "services.cli.main",
            "run",
            "--json",
            f"--home={self.home}",
            f"--nats-port={self.ports['nats']}",
            f"--openbao-port={self.ports['openbao']}",
            f"--openbao-cluster-port={self.ports['openbao_cluster']}",
            f"--idp-port={self.ports['idp']}",
            *(f"--service-port={entry.name}={self.ports[entry.name]}" for entry in SERVICES),
            *self.extra_args,
        ]
        log = open(self.log_file, "a")  # the child inherits the descriptor; ours closes right away
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, **self.env} if self.env else None
        )
        log.close()
        self._lines = queue.Queue()
        threading.Thread(target=self._read_stdout, args=(self.proc, self._lines), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"steward run exited ({self.proc.wait()}) before ready:\n{self.log_tail()}")
            event = json.loads(line)
            if event.get("event") == "ready":
                self.summary = event
                return event
            raise AssertionError(f"steward run reported {event}:\n{self.log_tail()}")
        raise AssertionError(f"steward run not ready after {timeout_s}s:\n{self.log_tail()}")

    @staticmethod
    def _read_stdout(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                lines.put(line)
        lines.put(None)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        """Signal the launcher and wait for it to exit; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)

    def kill_everything(self) -> None:
        """Test teardown: never leave a launcher or a child behind, whatever happened."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in self.summary.get("pids", {}).values():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 60) -> str:
        """The last lines the launcher (and its children) logged."""
        try:
            return "\n".join(self.log_file.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_text(self) -> str:
        """Everything logged so far."""
        return self.log_file.read_text()
