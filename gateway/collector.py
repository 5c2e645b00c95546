"""The cyclic garbage collector, tuned once per serving process.

py-spy (`--native`) at 30 upstream calls a request found 22% of a worker's CPU
in `gc_collect_main`: every collection walked the objects loaded at start
(modules, classes, the app, the config) and the many small containers each
call leaves for a moment (headers, futures, coroutines), most of which go by
reference counting anyway. So, once the app is loaded, what exists is frozen
(`gc.freeze`: never traversed again; it lives as long as the process anyway)
and the youngest generation is collected after `GEN0_THRESHOLD` new
containers instead of 700: cyclic garbage still goes, in batches bounded by
that count. Only `gateway serve`'s workers do this, never an app embedded in
someone else's process (or the tests'). A reload unfreezes it all (`thaw`).
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000  # tracked containers allocated between young collections (700 by default)


def tune() -> None:
    """Freeze what the process holds now and collect the young generation less often."""
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


def thaw() -> None:
    """Unfreeze before a reload retires upstreams, so their cycles can be collected.

    A frozen object is never traversed, so a reference cycle frozen at start (an
    upstream and its batcher, through the bound method it sends with) would never be
    freed once a reload retires it, with its cache, breaker and metrics. Unfrozen
    objects go to the oldest generation: only full collections walk them again, and
    nothing is frozen again after a reload (each reload would pin its own cycles).
    """
    if gc.get_freeze_count():
        gc.unfreeze()
