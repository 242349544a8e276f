"""Recording read throughput: 16-ch 250 Hz EEG + 16 optical ch at 64 Hz, as CSV and BrainFlow files.

``run(quick)`` writes the recording in both formats to a temporary directory,
then times ``read_recording`` chunk by chunk. Reported per format: median and
p99 seconds per chunk, samples/s (timestamps x channels is ``values/s``), the
multiple of real time, the share of one core that reading takes at real time,
and the ratio against a baseline measured in the same run (tokenising the same
file with ``csv.reader`` and doing nothing else).
"""

from __future__ import annotations

import csv
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgetwin.sources.brainflow import _load_native, preset_layout, resolve_board
from edgetwin.sources.recording import read_recording

T0 = 1_700_000_000.0
EEG_HZ, OPT_HZ, N_EEG, N_OPT = 250, 64, 16, 16


def run(quick: bool) -> dict[str, Any]:
    """Median/p99 per chunk and throughput of reading each format."""
    seconds = 120 if quick else 900
    repeats = 1 if quick else 3
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = Path(tmp)
        csv_path = d / "rec.csv"
        _write_csv(csv_path, seconds)
        eeg_path, opt_path = d / "eeg.brainflow.csv", d / "optics.brainflow.csv"
        _write_brainflow(eeg_path, opt_path, seconds)
        base = _baseline(csv_path, repeats)
        results["csv"] = _measure([(csv_path, {})], seconds, repeats, base)
        bf_files = [(eeg_path, {"board": "SYNTHETIC_BOARD"}),
                    (opt_path, {"board": "MUSE_S_ATHENA_BOARD"})]
        bf_base = sum(_baseline(p, repeats, "\t") for p, _ in bf_files)
        results["brainflow_file"] = _measure(bf_files, seconds, repeats, bf_base)
    results["recording_s"] = {"median": seconds, "p99": seconds, "unit": "s"}
    return results


def _measure(files: list[tuple[Path, dict[str, Any]]], seconds: float, repeats: int,
             baseline_s: float) -> dict[str, Any]:
    chunk_times: list[float] = []
    totals: list[float] = []
    samples = values = 0
    for _ in range(repeats):
        samples = values = 0
        started = time.perf_counter()
        for path, kwargs in files:
            it = read_recording(path, "bench", chunk_rows=4096, **kwargs)
            while True:
                t = time.perf_counter()
                batch = next(it, None)
                if batch is None:
                    break
                chunk_times.append(time.perf_counter() - t)
                samples += len(batch)
                values += int(np.isfinite(batch.values).sum())
        totals.append(time.perf_counter() - started)
    total = statistics.median(totals)
    chunk_times.sort()
    return {
        "median": statistics.median(chunk_times),
        "p99": chunk_times[min(len(chunk_times) - 1, int(0.99 * len(chunk_times)))],
        "unit": "s per 4096-row chunk",
        "total_s": total,
        "rows_per_s": samples / total,
        "values_per_s": values / total,
        "x_real_time": seconds / total,
        "cpu_share_at_real_time": total / seconds,
        "ratio_vs_csv_tokenise_only": total / baseline_s,
        "files_mb": sum(p.stat().st_size for p, _ in files) / 1e6,
    }


def _baseline(path: Path, repeats: int, delimiter: str = ",") -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with path.open(newline="") as fh:
            for _row in csv.reader(fh, delimiter=delimiter):
                pass
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _signals(seconds: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    t_eeg = T0 + np.arange(int(seconds * EEG_HZ)) / EEG_HZ
    t_opt = T0 + np.arange(int(seconds * OPT_HZ)) / OPT_HZ
    eeg = rng.normal(0, 20, (t_eeg.size, N_EEG))
    opt = 20_000 + rng.normal(0, 50, (t_opt.size, N_OPT))
    return t_eeg, eeg, t_opt, opt


def _write_csv(path: Path, seconds: float) -> None:
    """One CSV: EEG rows at 250 Hz and optical rows at 64 Hz, merged by time, blanks between."""
    t_eeg, eeg, t_opt, opt = _signals(seconds)
    eeg_names = [f"eeg_{i + 1}" for i in range(N_EEG)]
    opt_names = [f"fnirs_s{i // 4 + 1}_d{i % 4 + 1}_{730 if i % 2 == 0 else 850}"
                 for i in range(N_OPT)]
    blank_opt = "," * N_OPT
    blank_eeg = "," * N_EEG
    order = np.argsort(np.concatenate([t_eeg, t_opt]), kind="stable")
    with path.open("w") as fh:
        fh.write(",".join(["timestamp", *eeg_names, *opt_names]) + "\n")
        for k in order:
            if k < t_eeg.size:
                cells = ",".join(f"{v:.3f}" for v in eeg[k])
                fh.write(f"{t_eeg[k]:.6f},{cells}{blank_opt}\n")
            else:
                j = k - t_eeg.size
                cells = ",".join(f"{v:.1f}" for v in opt[j])
                fh.write(f"{t_opt[j]:.6f}{blank_eeg},{cells}\n")


def _write_brainflow(eeg_path: Path, opt_path: Path, seconds: float) -> None:
    """DataFilter.write_file files: synthetic default (16 EEG), Athena ancillary (16 optics)."""
    t_eeg, eeg, t_opt, opt = _signals(seconds)
    write = _load_native().DataFilter.write_file
    for path, board, t, x in ((eeg_path, "SYNTHETIC_BOARD", t_eeg, eeg),
                              (opt_path, "MUSE_S_ATHENA_BOARD", t_opt, opt)):
        layout = preset_layout(resolve_board(board), 0 if board == "SYNTHETIC_BOARD" else 2)
        data = np.zeros((layout.num_rows, t.size))
        data[layout.timestamp_row] = t
        data[list(layout.rows[: x.shape[1]])] = x.T
        write(np.ascontiguousarray(data), str(path), "w")


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=2))
