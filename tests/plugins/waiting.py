"""The one way a test waits: :func:`eventually` polls a condition until it holds or a safety timeout ends.

Tests wait for conditions, never for a guessed duration: a fixed sleep either wastes time or races the
thing it waits for on a loaded machine. The timeout is a safety net for a condition that never comes,
not a timing assertion — give it room (seconds, not milliseconds) unless the test's point is that the
condition must hold before something else could explain it (then say so at the call).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

__all__ = ["eventually"]

POLL_INTERVAL_S = 0.05


async def eventually(
    predicate: Callable[[], object | Awaitable[object]],
    timeout_s: float = 20.0,
    *,
    what: str,
    interval_s: float = POLL_INTERVAL_S,
) -> None:
    """Return as soon as ``predicate()`` (plain or async) is truthy; raise AssertionError naming ``what`` after
    ``timeout_s``. An exception from the predicate is not swallowed: it fails the test as it is. ``interval_s``
    spaces the polls (longer for a predicate that is itself a remote call made by many waiters at once)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout_s:g} s")
        await asyncio.sleep(interval_s)
