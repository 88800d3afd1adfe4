"""A server's Prometheus text, read over HTTP as Prometheus reads it, and its series."""

from __future__ import annotations

import asyncio
import urllib.request

__all__ = ["sample", "scrape", "series"]


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


async def scrape(port: int) -> str:
    """/metrics of the metrics listener on `port` (read off the event loop)."""
    return await asyncio.to_thread(_get, port)


def series(text: str) -> set[str]:
    """Every series of the text (name and labels of each sample line; a histogram's buckets,
    count and sum each count once)."""
    return {
        line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")
    }


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the series `name` with exactly `labels` (0 when it is absent, as for a
    counter that never moved)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series_text, _, value = line.rpartition(" ")
        metric, _, rest = series_text.partition("{")
        if metric != name:
            continue
        found = dict(_labels(rest.rstrip("}"))) if rest else {}
        if found == labels:
            return float(value)
    return 0.0


def _labels(text: str) -> list[tuple[str, str]]:
    """`a="x",b="y"` as pairs (values hold no quote: the label values of these tests)."""
    pairs = []
    for part in text.split('",'):
        key, _, value = part.partition("=")
        pairs.append((key.strip(), value.strip('"')))
    return pairs
