"""glibc malloc settings for a daemon that runs for months on a small machine.

glibc gives each thread that contends for the heap an arena of its own (up to
8 per core), and each arena keeps the memory its thread once needed: the daemon's
writer, pollers and worker threads each hold a few MiB of free pages that no
other thread can reuse. Two arenas (what ``MALLOC_ARENA_MAX=2`` does for a whole
process) keep the threads' small allocations in shared pools; per-thread caches
still serve most calls without a lock. glibc also raises its mmap threshold to the
size of the largest block freed (up to 32 MiB), after which numpy's per-batch
arrays of a few hundred KiB land in the heap and fragment it; a fixed threshold
keeps them in mappings of their own that go back to the kernel when freed.
``malloc_trim`` hands free pages in the middle of an arena back to the kernel,
which plain ``free`` never does.

All are no-ops where the C library is not glibc (musl, macOS): the daemon runs,
only without the tuning. ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` in the
environment win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from typing import Any

_LOGGER = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter numbers in glibc's malloc.h
M_ARENA_MAX = -8
DAEMON_ARENAS = 2
DAEMON_MMAP_THRESHOLD = 256 * 1024


def tune_malloc(arenas: int = DAEMON_ARENAS, mmap_threshold: int = DAEMON_MMAP_THRESHOLD
                ) -> bool:
    """Cap glibc's malloc arenas (for threads created from now on) and fix its mmap
    threshold; False where not possible (not glibc, or both set in the environment).

    Call before the daemon starts its threads.
    """
    if arenas < 1:
        raise ValueError(f"arenas must be at least 1, not {arenas}")
    libc = _glibc()
    if libc is None:
        return False
    done = False
    if not os.environ.get("MALLOC_ARENA_MAX"):
        done = bool(libc.mallopt(M_ARENA_MAX, arenas))
    if not os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        done = bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) or done
    _LOGGER.debug("malloc tuned: %d arenas, mmap above %d bytes: %s", arenas, mmap_threshold,
                  done)
    return done


def trim() -> bool:
    """Return free heap pages to the kernel (glibc ``malloc_trim(0)``); True if any were."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


@functools.cache
def _glibc() -> Any:
    """The process's glibc with ``mallopt`` and ``malloc_trim`` typed, or None."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: musl has neither, macOS lacks mallopt
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return libc
