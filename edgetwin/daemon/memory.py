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


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33 and later): every field a size_t."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def heap_parts() -> dict[str, int]:
    """What C code holds on malloc's heap, apart from what it keeps free: ``heap_used_bytes``
    (blocks in use, mapped ones included) and ``heap_free_bytes`` (free inside the arenas:
    fragmentation that RSS counts but nothing uses); {} without glibc's ``mallinfo2``.

    So a reader of a growing RSS can tell a leak (used grows) from fragmentation (free
    grows). Walks the arenas under their locks: cheap at the daemon's few arenas.
    """
    lib = _mallinfo_lib()
    if lib is None:
        return {}
    info = lib.mallinfo2()
    return {"heap_used_bytes": int(info.uordblks + info.hblkhd),
            "heap_free_bytes": int(info.fordblks)}


def sqlite_bytes() -> int | None:
    """Memory SQLite holds for all the process's connections (page caches, statements),
    from the library Python's ``sqlite3`` is linked to; None where that cannot be asked."""
    lib = _sqlite_lib()
    return int(lib.sqlite3_memory_used()) if lib is not None else None


_Signatures = dict[str, tuple[list[Any], Any]]  # function -> (argtypes, restype)


def _typed_library(name: str, functions: _Signatures) -> Any:
    """The C library ``name`` (as ``find_library`` spells it) with ``functions`` typed, or
    None where it or one of them is missing."""
    path = ctypes.util.find_library(name)
    if not path:
        return None
    try:
        lib = ctypes.CDLL(path)
        for fn, (argtypes, restype) in functions.items():
            getattr(lib, fn).argtypes = argtypes
            getattr(lib, fn).restype = restype
    except (OSError, AttributeError):
        return None
    return lib


@functools.cache
def _glibc() -> Any:
    """The process's glibc with ``mallopt`` and ``malloc_trim`` typed, or None (not glibc:
    musl has neither, macOS lacks mallopt)."""
    return _typed_library("c", {"mallopt": ([ctypes.c_int, ctypes.c_int], ctypes.c_int),
                                "malloc_trim": ([ctypes.c_size_t], ctypes.c_int)})


@functools.cache
def _mallinfo_lib() -> Any:
    """glibc with ``mallinfo2`` typed, or None (older than 2.33, or not glibc)."""
    return _typed_library("c", {"mallinfo2": ([], _MallInfo2)})


@functools.cache
def _sqlite_lib() -> Any:
    """The SQLite library Python's ``sqlite3`` uses, with ``sqlite3_memory_used`` typed, or
    None where the loadable one is another copy (a statically linked module)."""
    import sqlite3  # the module's library is the one loaded: dlopen returns the same handle

    lib = _typed_library("sqlite3", {"sqlite3_memory_used": ([], ctypes.c_int64),
                                     "sqlite3_libversion": ([], ctypes.c_char_p)})
    if lib is None or lib.sqlite3_libversion().decode() != sqlite3.sqlite_version:
        return None
    return lib
