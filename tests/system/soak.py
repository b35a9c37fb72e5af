"""``make soak``: the full campaign on SQLite and PostgreSQL, one report on stdout and in ``bench/results/``.

Sizes come from ``SOAK_*`` environment variables (see :meth:`Sizes.full`); ``SOAK_DATABASES`` picks the
databases (``sqlite,postgresql``). Exit code 0 when every promise held, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from tests.system.harness.campaign import CampaignResult, Sizes, run_campaign, violations
from tests.system.harness.report import render
from tests.system.harness.stack import SystemStack

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def _progress(line: str) -> None:
    sys.stderr.write(f"[soak] {line}\n")
    sys.stderr.flush()


def run(database: str, sizes: Sizes, root: Path) -> CampaignResult:
    """Start a stack on ``database``, run the campaign, stop the stack."""
    stack = SystemStack(root / database, database=database)
    _progress(f"starting `steward run` on {database} (log {root / database / 'stack.log'})")
    try:
        stack.start()
        return asyncio.run(run_campaign(stack, sizes, _progress))
    finally:
        stack.stop()


def main() -> int:
    """Run every database, print the report, keep a copy; non-zero exit when anything was violated."""
    sizes = Sizes.full()
    databases = [name.strip() for name in os.environ.get("SOAK_DATABASES", "sqlite,postgresql").split(",") if name]
    scratch = Path(tempfile.mkdtemp(prefix="steward-soak-"))
    results = [run(database, sizes, scratch) for database in databases]
    text = render(results, sizes=", ".join(f"{k}={v}" for k, v in asdict(sizes).items()))
    sys.stdout.write(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"soak-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}.txt"
    out.write_text(text)
    _progress(f"report written to {out}")
    if any(violations(result) for result in results):
        _progress(f"promises broken: the stacks' logs are kept in {scratch}")
        return 1
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
