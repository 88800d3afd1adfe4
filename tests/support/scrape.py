"""A server's Prometheus text, read over HTTP as Prometheus reads it, and its series."""

from __future__ import annotations

import asyncio
import urllib.request

__all__ = ["scrape", "series"]


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
