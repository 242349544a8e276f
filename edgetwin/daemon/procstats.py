"""What the daemon process costs, for ``status``: resident memory and CPU per thread.

Linux ``/proc`` only; elsewhere each figure is empty or falls back (``ru_maxrss``). Read
at every ``status`` (the soak asks every 10 s): a few tiny files, well under a millisecond.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path

from edgetwin.daemon import memory

NATIVE = "(native threads)"  # threads Python did not start: BrainFlow's board threads, ...


def rss_bytes() -> int:
    """Current resident set size (Linux), not the peak."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:  # noqa: PTH123 - hot, tiny read
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_parts() -> dict[str, int]:
    """RSS split into anonymous pages (heaps) and file-backed or shared pages (mapped
    libraries and files), plus the blocks Python's allocator holds, malloc's heap in use and
    free (:func:`memory.heap_parts`) and SQLite's own memory; {} off Linux."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:  # noqa: PTH123 - hot, tiny read
            fields = f.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        resident, shared = int(fields[1]) * page, int(fields[2]) * page
    except (OSError, ValueError, IndexError):
        return {}
    parts = {"anon_bytes": resident - shared, "file_bytes": shared,
             "py_blocks": sys.getallocatedblocks(), **memory.heap_parts()}
    if (sqlite := memory.sqlite_bytes()) is not None:
        parts["sqlite_bytes"] = sqlite
    return parts


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) of each live thread, by its Python name; threads that
    Python did not start are summed under :data:`NATIVE`. Threads sharing a name (executor
    workers) are summed. {} off Linux.

    So a reader can tell the writer from the loop, and the daemon's own work from a
    library's threads (an emulated board's generator, in the soak).
    """
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return {}
    for task in tasks:
        try:
            fields = (task / "stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
        name = names.get(int(task.name), NATIVE)
        out[name] = round(out.get(name, 0.0) + cpu, 2)
    return out


def handles() -> dict[str, int]:
    """Open file descriptors and live threads (Linux), {} elsewhere.

    Memory is not the only thing a daemon that runs for months can leak: a reconnect that
    leaves a socket, a D-Bus connection or a thread behind does it again at every drop of a
    link, and the process dies at its descriptor limit weeks later. The soak reads these
    beside the RSS to see that each fault gives back what it took.
    """
    try:
        return {"open_fds": sum(1 for _ in Path("/proc/self/fd").iterdir()),
                "threads": sum(1 for _ in Path("/proc/self/task").iterdir())}
    except OSError:
        return {}
