"""Reading a service's ``/metrics`` the way Prometheus does, for tests.

:func:`scrape` fetches the text over HTTP off the event loop (the scrape callbacks of a service ask its
loop for NATS consumer info, so a blocking fetch on the loop would starve them); :func:`samples` parses
the exposition with prometheus_client's own parser into ``{(name, labels): value}``.
"""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Samples", "sample", "samples", "scrape"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, keyed by series name and label set."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            found[(item.name, frozenset(item.labels.items()))] = item.value
    return found


def sample(found: Samples, name: str, **labels: str) -> float | None:
    """The value of the one series ``name`` whose labels include ``labels`` (None if absent; summed if many)."""
    wanted = set(labels.items())
    values = [value for (series, have), value in found.items() if series == name and wanted <= have]
    return sum(values) if values else None


async def scrape(port: int) -> Samples:
    """GET ``/metrics`` on ``127.0.0.1:port`` and parse it."""

    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    return samples(await asyncio.to_thread(fetch))
