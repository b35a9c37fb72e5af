"""Choosing listening ports without ever reusing somebody else's server.

A port given explicitly (flag or ``STEWARD_RUN__*``) must be free, or start-up fails naming it. A
*default* port that is taken (say a system NATS on 4222) is replaced: first by the port this home
used last time, so addresses stay stable across restarts, then by any free port. The choice is
reported so the summary can say why an address is not the usual one.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

__all__ = ["PortChoice", "PortUnavailable", "choose_port", "port_is_free"]


class PortUnavailable(RuntimeError):
    """An explicitly requested port is already in use."""


@dataclass(frozen=True)
class PortChoice:
    """The port a component will use and, when it is not the requested one, why."""

    port: int
    note: str | None = None


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # A server that just exited leaves TIME_WAIT sockets; servers bind with SO_REUSEADDR too.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        # Binding can succeed while another process listens on the wildcard address; ask it directly.
        return probe.connect_ex((host, port)) != 0


def _any_free_port(host: str, taken: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port not in taken:
            return port


def choose_port(
    component: str,
    *,
    host: str,
    wanted: int,
    explicit: bool,
    remembered: int | None = None,
    taken: set[int] | None = None,
) -> PortChoice:
    """Pick the port for ``component``; ``taken`` holds ports already promised to other components."""
    taken = taken if taken is not None else set()
    if wanted not in taken and port_is_free(host, wanted):
        return PortChoice(wanted)
    if explicit:
        raise PortUnavailable(
            f"{component}: port {wanted} on {host} is already in use — stop whatever listens there "
            f"or choose another port"
        )
    if remembered is not None and remembered != wanted and remembered not in taken and port_is_free(host, remembered):
        port = remembered
    else:
        port = _any_free_port(host, taken)
    return PortChoice(port, f"default port {wanted} is in use by another process; {component} uses {port} instead")
