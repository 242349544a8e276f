"""Numpy helpers with no edgetwin layer below them (a base, like ``types``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
# Largest block of :class:`Growing` (a few times the daemon's 256 KiB mmap threshold).
BLOCK_BYTES = 512 * 1024


class Growing:
    """Rows appended into blocks of numpy arrays, joined once at the end: a day of forecasts
    as a few arrays, not ~10^5 Python objects (which fragment the heap and keep its
    high-water mark resident after they are freed). Blocks grow geometrically up to
    :data:`BLOCK_BYTES`, so little capacity is ever spare; a block that large lives in a
    mapping of its own (the daemon's fixed mmap threshold) and goes back to the kernel
    when freed."""

    def __init__(self, row_shape: tuple[int, ...] = (), dtype: npt.DTypeLike = np.float64) -> None:
        self._row_shape = row_shape
        self._row_cells = math.prod(row_shape)
        self._dtype = np.dtype(dtype)
        self._full: list[FloatArray] = []
        self._block = np.empty((64, *row_shape), dtype=self._dtype)
        self._used = 0
        self.n = 0

    def _next_block(self) -> None:
        self._full.append(self._block)
        row_bytes = self._dtype.itemsize * self._row_cells
        rows = min(max(64, 2 * self._block.shape[0]), max(64, BLOCK_BYTES // row_bytes))
        self._block = np.empty((rows, *self._row_shape), dtype=self._dtype)
        self._used = 0

    def append(self, row: Any) -> None:
        if self._used == self._block.shape[0]:
            self._next_block()
        self._block[self._used] = row
        self._used += 1
        self.n += 1

    def next_row(self) -> FloatArray:
        """The next row's slot, to be filled in place (several columns of a row at once)."""
        if self._used == self._block.shape[0]:
            self._next_block()
        row: FloatArray = self._block[self._used]
        self._used += 1
        self.n += 1
        return row

    def extend(self, rows: FloatArray) -> None:
        done = 0
        while done < rows.shape[0]:
            if self._used == self._block.shape[0]:
                self._next_block()
            take = min(rows.shape[0] - done, self._block.shape[0] - self._used)
            self._block[self._used : self._used + take] = rows[done : done + take]
            self._used += take
            done += take
        self.n += rows.shape[0]

    def array(self) -> FloatArray:
        """The rows so far as one array; the blocks are let go."""
        out = np.concatenate([*self._full, self._block[: self._used]])
        # a fresh empty block: a slice of the last one would keep all of it alive (up to
        # BLOCK_BYTES per column, ~12 MB over a day's forecast columns)
        self._full, self._used, self.n = [], 0, 0
        self._block = np.empty((0, *self._row_shape), dtype=self._dtype)
        return out


def as_run(sel: npt.NDArray[np.bool_]) -> slice | npt.NDArray[np.bool_]:
    """A boolean row selection as a slice when its rows are one run (indexing with a slice
    gives views, with a mask copies); else the mask itself."""
    idx = np.flatnonzero(sel)
    if not idx.size:
        return slice(0, 0)
    if idx[-1] - idx[0] + 1 == idx.size:
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return sel
