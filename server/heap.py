"""The garbage collector on a serving process: the start-up heap frozen, thresholds chosen.

A started server holds about 150,000 objects the collector tracks (modules, protobuf
descriptors, grpc, pymongo, the components), nearly all of them for the process's life.
Left as they are, every full (generation 2) collection walks all of them: on a busy
server one ran every 4,000-8,000 calls and held the event loop 130-170 ms, so one call
in a few thousand waited that much longer whatever its own cost (docs/performance.md).
`gc.freeze()` moves everything alive at that moment to a permanent generation the
collector never walks; later collections see only what was made afterwards (per-call
objects, and caches as they fill), so even a full collection takes a few milliseconds.

Frozen objects are still freed when their last reference goes; only a reference cycle
among them would stay until the process exits, and the start-up heap is kept for the
process's life anyway. The freeze runs once the server is serving, after a collection,
so no garbage is frozen.
"""

from __future__ import annotations

import gc

__all__ = ["THRESHOLDS", "freeze_startup_heap"]

# CPython's own: a young collection walks at most about 2,000 new objects (about a
# millisecond); with 10,000 the young pauses reached 9-10 ms for no less collector time
# per call (docs/performance.md). Full collections are cheap once the heap is frozen.
THRESHOLDS = (2000, 10, 10)


def freeze_startup_heap() -> None:
    """Collect what start-up left behind, freeze the rest, set the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
