"""The C allocator, set once per process so that big buffers go back to the OS when freed.

glibc serves a buffer over its mmap threshold (128 KiB) from a mapping of its own, and
unmaps it on free; but each time such a buffer is freed it raises the threshold to that
buffer's size (up to 32 MiB). After the first multi-megabyte body, upstream bodies, parsed
replies and job results all come from the heap (and from the arenas of the threads that
parse them), where the small objects left between them keep the freed space from ever
being returned: issue 11 measured RSS that stayed at its peak after a flood. A fixed
threshold (which also stops the adjusting) keeps every buffer over 256 KiB in its own
mapping, at the cost of one mmap/munmap pair per big buffer.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD = 256 * 1024  # bytes; glibc's default is 128 KiB, rising to 32 MiB


def tune() -> bool:
    """Fix the mmap threshold; True if it was set (glibc), False where there is no such knob."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the libc this process already runs on
    except (OSError, AttributeError):  # pragma: no cover - a libc without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))  # musl's stub answers 0


def trim() -> bool:
    """Return the heap's free pages to the OS (glibc's `malloc_trim`); False where there is none.

    Bodies read in chunks below the mmap threshold come from the heap; once freed, the
    pages stay in RSS wherever a live object sits above them. `malloc_trim` releases
    every free page, fragments included: a few milliseconds for a heap of ~100 MB, so
    it is called when the body budget drains after a burst (runtime.py), not per call.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - a libc without malloc_trim
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return bool(malloc_trim(0))
