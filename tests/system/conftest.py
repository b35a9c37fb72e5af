"""The system suite: one real ``steward run`` per module, the harness in :mod:`tests.system.harness`.

Quick variants run in ``make test`` (SQLite, two faults, a small fuzz). The full campaign runs under
``make soak`` (``SOAK=1``); without it the ``soak`` tests are skipped, on CI too — they take minutes.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/system are ``system``; ``soak`` ones are skipped unless SOAK=1."""
    skip = pytest.mark.skip(reason="full system campaign: run `make soak` (SOAK=1)")
    here = os.path.dirname(__file__)
    for item in items:
        if not str(item.fspath).startswith(here):
            continue
        item.add_marker(pytest.mark.system)
        if item.get_closest_marker("soak") and os.environ.get("SOAK") != "1":
            item.add_marker(skip)
