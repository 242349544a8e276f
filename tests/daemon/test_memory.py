"""glibc malloc tuning of the daemon (edgetwin.daemon.memory), checked in child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from edgetwin.daemon import memory

GLIBC = memory._glibc() is not None

# A child that optionally caps the arenas, lets six threads allocate, then prints how many
# heaps glibc's malloc_info reports (one per arena).
CHILD = textwrap.dedent("""
    import ctypes, re, sys, tempfile, threading
    import numpy as np
    from edgetwin.daemon import memory

    capped = memory.tune_malloc(arenas=1) if sys.argv[1] == "cap" else None
    def work():
        for _ in range(50):
            np.ones(4096).sum()
    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile() as out:
        f = libc.fopen(out.name.encode(), b"w")
        libc.malloc_info(0, f)
        libc.fclose(f)
        heaps = len(re.findall(r'<heap nr="', open(out.name).read()))
    print(capped, heaps)
""")


def _child(mode: str, **env: str) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True,
        env={**{k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}, **env},
    )
    capped, heaps = done.stdout.split()
    return capped, int(heaps)


@pytest.mark.skipif(not GLIBC, reason="malloc arenas are a glibc feature")
def test_capped_arenas_are_shared_by_new_threads() -> None:
    assert _child("cap") == ("True", 1)
    # without the cap, the same threads get arenas of their own
    capped, heaps = _child("free")
    assert capped == "None" and heaps > 1


@pytest.mark.skipif(not GLIBC, reason="malloc arenas are a glibc feature")
def test_explicit_environment_setting_wins() -> None:
    capped, heaps = _child("cap", MALLOC_ARENA_MAX="3", MALLOC_MMAP_THRESHOLD_="131072")
    assert capped == "False"
    assert 1 < heaps <= 3


def test_arena_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        memory.tune_malloc(arenas=0)


# A child that frees one 4 MiB block (glibc then raises its mmap threshold past 4 MiB), then
# allocates a 512 KiB block and prints how many bytes malloc holds in mmapped blocks.
MMAP_CHILD = textwrap.dedent("""
    import ctypes, sys
    from edgetwin.daemon import memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                    "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    if sys.argv[1] == "tune":
        memory.tune_malloc()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = MallInfo2
    libc.free(libc.malloc(4 << 20))
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(512 << 10)
    print(libc.mallinfo2().hblkhd - before)
    libc.free(block)
""")


@pytest.mark.skipif(not GLIBC or not hasattr(memory._glibc(), "mallinfo2"),
                    reason="mallinfo2 is glibc >= 2.33")
def test_fixed_mmap_threshold_keeps_large_blocks_out_of_the_heap() -> None:
    def mmapped(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", MMAP_CHILD, mode], capture_output=True,
                              text=True, check=True)
        return int(done.stdout)

    assert mmapped("tune") >= 512 << 10  # its own mapping, unmapped when freed
    assert mmapped("default") == 0  # glibc's raised threshold: carved out of the heap


TRIM_CHILD = textwrap.dedent("""
    from edgetwin.daemon import memory

    def rss_mib():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

    blocks = [bytearray(64 * 1024) for _ in range(400)]  # 25 MiB of heap, below mmap size
    keep = bytearray(64 * 1024)  # the heap's top stays in use: free alone cannot shrink it
    del blocks
    before = rss_mib()
    trimmed = memory.trim()
    print(trimmed, before - rss_mib())
""")


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is a glibc function")
def test_trim_returns_free_pages_inside_the_heap() -> None:
    done = subprocess.run([sys.executable, "-c", TRIM_CHILD], capture_output=True, text=True,
                          check=True)
    trimmed, freed_mib = done.stdout.split()
    assert trimmed == "True"
    assert float(freed_mib) > 15.0


def test_heap_parts_tell_memory_in_use_from_memory_kept_free() -> None:
    """A C allocation shows as heap in use; freed in the middle of the heap it shows as free
    (fragmentation), not as a leak. Small blocks below the mmap threshold stay in the arena."""
    import ctypes

    assert memory.heap_parts(), "glibc 2.33+ (Debian 12 has 2.36) has mallinfo2"
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    before = memory.heap_parts()
    blocks = [libc.malloc(4096) for _ in range(8192)]  # 32 MiB in 4 KiB blocks
    held = memory.heap_parts()
    assert held["heap_used_bytes"] - before["heap_used_bytes"] >= 32 * 2**20
    for b in blocks[:-1:2]:  # every other block: free holes that cannot be returned whole
        libc.free(b)
    holes = memory.heap_parts()
    assert holes["heap_free_bytes"] - held["heap_free_bytes"] >= 15 * 2**20
    assert held["heap_used_bytes"] - holes["heap_used_bytes"] >= 15 * 2**20
    for b in blocks[1::2]:
        libc.free(b)


def test_sqlite_bytes_count_a_connections_page_cache() -> None:
    import sqlite3

    before = memory.sqlite_bytes()
    assert before is not None
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (b BLOB)")
    conn.executemany("INSERT INTO t VALUES (?)", [(bytes(4000),)] * 500)  # ~2 MB of pages
    grown = memory.sqlite_bytes()
    conn.close()
    assert grown is not None and grown - before >= 1_500_000
    after = memory.sqlite_bytes()
    assert after is not None and after < grown - 1_000_000
