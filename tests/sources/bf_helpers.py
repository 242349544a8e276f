"""Shared by the BrainFlow and recording tests: board-shaped data written by BrainFlow itself."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgetwin.sources.brainflow import _load_native, board_presets, preset_layout, resolve_board

ATHENA = "MUSE_S_ATHENA_BOARD"


def board_shaped(board: str, preset: int, seconds: float, t0: float | None = None,
                 seed: int = 0) -> np.ndarray:
    """A (num_rows x n) array shaped like ``board``'s ``preset``: distinct values per row.

    Optical rows hold slow positive intensities (row*1000 + a small sine) so
    optical density and MBLL stay finite; every other row holds seeded noise.
    """
    bid = resolve_board(board)
    layout = preset_layout(bid, preset)
    n = round(seconds * layout.sampling_rate)
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, 1.0, size=(layout.num_rows, n))
    t_start = time.time() if t0 is None else t0
    data[layout.timestamp_row] = t_start + np.arange(n) / layout.sampling_rate
    for row, channel in zip(layout.rows, layout.channels, strict=True):
        if channel.startswith(("fnirs_", "optical_")):
            k = np.arange(n) / layout.sampling_rate
            data[row] = 20_000.0 + 1000.0 * row + 50.0 * np.sin(2 * np.pi * 0.1 * k + row)
        elif channel == "battery":
            data[row] = 80.0
        elif channel == "marker":
            data[row] = 0.0
    return np.ascontiguousarray(data)


def write_board_files(tmp: Path, board: str, seconds: float, prefix: str = "rec",
                      ) -> dict[int, tuple[Path, np.ndarray]]:
    """One ``DataFilter.write_file`` file per preset of ``board``: preset -> (path, data)."""
    data_filter = _load_native().DataFilter
    out: dict[int, tuple[Path, np.ndarray]] = {}
    bid = resolve_board(board)
    for preset in board_presets(bid):
        data = board_shaped(board, preset, seconds, seed=preset)
        path = tmp / f"{prefix}_{preset}.csv"
        data_filter.write_file(data, str(path), "w")
        out[preset] = (path, data)
    return out
