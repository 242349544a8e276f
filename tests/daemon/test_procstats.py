"""The daemon's per-thread CPU figures: a Python thread under its own name, threads Python did
not start (a BrainFlow board's) under one native entry."""

from __future__ import annotations

import threading
import time

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


def test_a_brainflow_board_thread_is_reported_as_native() -> None:
    from brainflow.board_shim import BoardIds, BoardShim, BrainFlowInputParams

    BoardShim.disable_board_logger()
    board = BoardShim(BoardIds.SYNTHETIC_BOARD.value, BrainFlowInputParams())
    before = procstats.thread_cpu_s()
    board.prepare_session()
    board.start_stream()
    try:
        deadline = time.monotonic() + 30  # only a guard: the board burns CPU at once
        got = procstats.thread_cpu_s()
        while got.get(procstats.NATIVE, 0.0) <= before.get(procstats.NATIVE, 0.0):
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
            got = procstats.thread_cpu_s()
    finally:
        board.stop_stream()
        board.release_session()
    python_names = {t.name for t in threading.enumerate()}
    assert set(got) - {procstats.NATIVE} <= python_names


def test_memory_parts_add_up_to_the_resident_set() -> None:
    parts = procstats.memory_parts()
    rss = procstats.rss_bytes()
    assert parts["anon_bytes"] > 0 and parts["file_bytes"] > 0
    assert parts["anon_bytes"] + parts["file_bytes"] <= rss * 1.1
