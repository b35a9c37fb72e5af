"""The full campaign per database (every fault, a soak, a bigger fuzz) — ``make soak`` or ``SOAK=1 pytest -m soak``.

``make soak`` runs :mod:`tests.system.soak`, which prints one report for both databases; this test is the
same campaign, one database at a time, for a developer who wants pytest's output.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.system.harness.campaign import Sizes, run_campaign, violations
from tests.system.harness.report import render
from tests.system.harness.stack import SystemStack

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1200)]


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_full_campaign(database: str, tmp_path: Path) -> None:
    stack = SystemStack(tmp_path, database=database)
    try:
        stack.start()
        result = asyncio.run(run_campaign(stack, Sizes.full()))
    finally:
        stack.stop()
    report = render([result], sizes="full")
    print(report)
    assert violations(result) == [], report
