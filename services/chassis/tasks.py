"""One shape for work that runs beside a service's server: :class:`BackgroundTask`.

The outbox relay, bus consumers, the gateway's access log and its revocation listener are all
background tasks: ``start()`` runs :meth:`BackgroundTask.run` as a named asyncio task, ``stop()``
cancels it and then runs :meth:`BackgroundTask.finish` (a last flush, an unsubscribe). A task whose
``run`` raises is never lost silently: it is logged with its name and reported to every listener
registered with :meth:`BackgroundTask.on_crash` (the :class:`~services.chassis.runtime.ServiceRuntime`
registers one that ends the process with a non-zero status).

It lives apart from ``runtime.py`` because the bus's relay and consumer are tasks too and the runtime
imports the bus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("steward.tasks")

__all__ = ["BackgroundTask", "CrashListener", "PeriodicTask"]

CrashListener = Callable[["BackgroundTask", BaseException], None]


class BackgroundTask:
    """A named background loop with start, stop and crash reporting. Subclasses implement :meth:`run`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.crash: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[CrashListener] = []

    async def run(self) -> None:
        """The task's body. Loops are expected to handle their own transient errors; what escapes is a crash."""
        raise NotImplementedError

    async def finish(self) -> None:
        """Runs once after the loop has ended on :meth:`stop` (flush what is buffered, unsubscribe)."""

    @property
    def running(self) -> bool:
        """True while :meth:`run` has neither returned, raised nor been cancelled."""
        return self._task is not None and not self._task.done()

    def on_crash(self, listener: CrashListener) -> None:
        """Call ``listener(task, exception)`` if :meth:`run` raises."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Run :meth:`run` in the background (a second call while it runs does nothing)."""
        if self.running:
            return
        self.crash = None
        self._task = asyncio.create_task(self.run(), name=self.name)
        self._task.add_done_callback(self._ended)

    async def stop(self) -> None:
        """Cancel the loop, wait for it to end, then :meth:`finish`. A crashed task stops without raising."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            # asyncio.wait neither raises the task's outcome nor swallows a cancellation of stop() itself.
            await asyncio.wait({task})
        await self.finish()

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return  # a task may finish its job and return (a subscription made once)
        self.crash = exc
        log.error("background task crashed", extra={"task": self.name}, exc_info=exc)
        for listener in self._listeners:
            try:
                listener(self, exc)
            except Exception as listener_error:
                log.error(
                    "crash listener failed",
                    extra={"task": self.name, "error_type": type(listener_error).__name__},
                )


class PeriodicTask(BackgroundTask):
    """A background task that runs :meth:`once` every ``interval_s``; a failed round is logged and retried
    next round. Tests call :meth:`once` themselves after moving the injected clock. With ``delay_first`` the
    first round comes one interval after start rather than at once (replicas restarting together do not race)."""

    def __init__(self, name: str, *, interval_s: float, delay_first: bool = False) -> None:
        super().__init__(name)
        self.interval_s = interval_s
        self.delay_first = delay_first

    async def once(self) -> int:
        """One round; returns how much it did."""
        raise NotImplementedError

    async def run(self) -> None:
        """Round, sleep, repeat (sleep first with ``delay_first``)."""
        if self.delay_first:
            await asyncio.sleep(self.interval_s)
        while True:
            try:
                await self.once()
            except Exception as exc:
                log.warning(
                    "periodic round failed; retrying next round",
                    extra={"task": self.name, "error_type": type(exc).__name__},
                )
            await asyncio.sleep(self.interval_s)
