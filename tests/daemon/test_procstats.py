"""The daemon's per-thread CPU figures: a Python thread under its own name, threads Python did
not start (a BrainFlow board's) under one native entry."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from edgetwin.daemon import procstats


def test_a_busy_python_thread_is_reported_under_its_name() -> None:
    done = threading.Event()
    burned: list[float] = []

    def spin() -> None:
        start = time.thread_time()
        while time.thread_time() - start < 0.3:  # CPU time of this thread, not wall time
            sum(range(1000))
        burned.append(time.thread_time() - start)
        done.wait(30)

    native_before = procstats.thread_cpu_s().get(procstats.NATIVE, 0.0)
    t = threading.Thread(target=spin, name="procstats-spinner")
    t.start()
    try:
        while not burned:
            time.sleep(0.01)
        got = procstats.thread_cpu_s()
    finally:
        done.set()
        t.join()
    assert got["procstats-spinner"] >= 0.2
    assert "MainThread" in got
    # not mistaken for a native thread (other tests' native threads may hold CPU from before)
    assert got.get(procstats.NATIVE, 0.0) - native_before < 0.2


def _task_cpu_s(tids: set[int]) -> float:
    """CPU seconds of these threads of this process (those that ended count 0)."""
    total = 0.0
    for tid in tids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _tids() -> set[int]:
    return {int(p.name) for p in Path("/proc/self/task").iterdir()}


def test_a_brainflow_board_thread_is_reported_as_native() -> None:
    """Measured on the board's own threads: the native total of the whole process could fall
    meanwhile (another test's native thread ending), which left the old comparison waiting
    until its guard ran out on a loaded machine."""
    from brainflow.board_shim import BoardIds, BoardShim, BrainFlowInputParams

    BoardShim.disable_board_logger()
    board = BoardShim(BoardIds.SYNTHETIC_BOARD.value, BrainFlowInputParams())
    before = _tids()
    board.prepare_session()
    board.start_stream()
    try:
        deadline = time.monotonic() + 60  # only a guard: the board burns CPU at once
        python = {t.native_id for t in threading.enumerate()}
        while True:
            new_native = _tids() - before - python
            board_cpu = _task_cpu_s(new_native)
            got = procstats.thread_cpu_s()  # after: it holds at least what was just read
            if board_cpu > 0:
                break
            assert time.monotonic() < deadline, (got, new_native)
            time.sleep(0.05)
    finally:
        board.stop_stream()
        board.release_session()
    assert new_native  # the board runs threads Python did not start
    # they are counted under NATIVE (which also holds other native threads, hence >=)
    assert got.get(procstats.NATIVE, 0.0) >= board_cpu - 0.005  # procstats rounds to 0.01
    python_names = {t.name for t in threading.enumerate()}
    assert set(got) - {procstats.NATIVE} <= python_names


def test_memory_parts_add_up_to_the_resident_set() -> None:
    parts = procstats.memory_parts()
    rss = procstats.rss_bytes()
    assert parts["anon_bytes"] > 0 and parts["file_bytes"] > 0
    assert parts["anon_bytes"] + parts["file_bytes"] <= rss * 1.1


def test_handles_count_this_process_descriptors_and_threads() -> None:
    before = procstats.handles()
    pipes = [os.pipe() for _ in range(10)]
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="held")
    worker.start()
    try:
        during = procstats.handles()
    finally:
        stop.set()
        worker.join()
        for r, w in pipes:
            os.close(r)
            os.close(w)
    after = procstats.handles()
    assert during["open_fds"] - before["open_fds"] == 20
    assert during["threads"] - before["threads"] == 1
    assert after == before  # given back: what the soak looks for after every fault
