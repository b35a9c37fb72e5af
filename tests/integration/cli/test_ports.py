"""Port choice: a busy default is replaced (and said so), a busy explicit port is an error, addresses stay stable."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from services.devstack.ports import PortUnavailable, choose_port, port_is_free
from tests.plugins.infra import free_port


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port somebody else listens on (like the system NATS on 4222)."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        yield int(squatter.getsockname()[1])


def test_a_busy_default_port_is_replaced_and_the_reason_given(busy_port: int) -> None:
    choice = choose_port("nats", host="127.0.0.1", wanted=busy_port, explicit=False)
    assert choice.port != busy_port
    assert port_is_free("127.0.0.1", choice.port)
    assert choice.note == f"default port {busy_port} is in use by another process; nats uses {choice.port} instead"


def test_a_busy_default_port_prefers_the_port_used_last_time(busy_port: int) -> None:
    last_time = free_port()
    choice = choose_port("nats", host="127.0.0.1", wanted=busy_port, explicit=False, remembered=last_time)
    assert choice.port == last_time


def test_a_busy_explicit_port_is_an_error_naming_it(busy_port: int) -> None:
    with pytest.raises(PortUnavailable, match=f"nats: port {busy_port} on 127.0.0.1 is already in use"):
        choose_port("nats", host="127.0.0.1", wanted=busy_port, explicit=True)


def test_a_free_port_is_used_as_asked_without_a_note() -> None:
    port = free_port()
    choice = choose_port("openbao", host="127.0.0.1", wanted=port, explicit=True)
    assert (choice.port, choice.note) == (port, None)


def test_a_port_promised_to_another_component_is_not_handed_out_twice() -> None:
    port = free_port()
    choice = choose_port("openbao_cluster", host="127.0.0.1", wanted=port, explicit=False, taken={port})
    assert choice.port != port
