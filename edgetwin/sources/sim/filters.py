"""Stateful all-pole noise filters that run in exact blocks of numpy matrix products.

The simulator shapes white noise into 1/f backgrounds and narrow-band rhythms
with first- and second-order all-pole filters. A Python loop per sample would
be too slow on a Pi, and scipy is not a runtime dependency, so each filter
works on blocks of ``block`` samples: the block's output is the zero-state
response (a lower-triangular Toeplitz product with the impulse response) plus
the zero-input response of the filter's carried state. This is exact, not an
approximation, and costs one small matmul per block.

Pink (1/f^chi) noise is a weighted sum of first-order (Lorentzian) processes
with log-spaced corner frequencies, each weighted so its low-frequency plateau
sits on the target power law (the classic "sum of relaxation processes"
construction; Keshner 1982, Proc. IEEE 70:212).
"""

from __future__ import annotations

import math

import numpy as np

from edgetwin.types import FloatArray


class AllPole:
    """``y[n] = gain*x[n] - a1*y[n-1] - a2*y[n-2]`` over a batch of independent lanes."""

    def __init__(self, a: tuple[float, ...], gain: float, lanes: int, block: int = 64) -> None:
        if not 1 <= len(a) <= 2:
            raise ValueError("AllPole supports order 1 or 2")
        self.order = len(a)
        self.block = block
        self.state = np.zeros((lanes, self.order))  # [y[-1], y[-2]]
        h = np.zeros(block)
        z = np.zeros((block, self.order))
        # Impulse response and the responses to a unit y[-1] or y[-2] initial condition.
        for j in range(-1, self.order):
            prev = [0.0, 0.0]
            if j >= 0:
                prev[j] = 1.0
            for n in range(block):
                x = gain if (j < 0 and n == 0) else 0.0
                y = x - sum(a[k] * prev[k] for k in range(self.order))
                prev = [y, prev[0]]
                if j < 0:
                    h[n] = y
                else:
                    z[n, j] = y
        idx = np.arange(block)
        lag = idx[:, None] - idx[None, :]
        self._h_t = np.where(lag >= 0, h[np.clip(lag, 0, None)], 0.0).T  # (block, block)
        self._z_t = z.T  # (order, block)

    def __call__(self, x: FloatArray) -> FloatArray:
        """Filter ``x`` of shape (lanes, n), continuing from the previous call."""
        n = x.shape[1]
        y = np.empty_like(x)
        b = self.block
        for start in range(0, n, b):
            m = min(b, n - start)
            blk = x[:, start : start + m] @ self._h_t[:m, :m] + self.state @ self._z_t[:, :m]
            y[:, start : start + m] = blk
            if m >= 2 and self.order == 2:
                self.state = np.stack([blk[:, -1], blk[:, -2]], axis=1)
            elif self.order == 2:
                self.state = np.stack([blk[:, -1], self.state[:, 0]], axis=1)
            else:
                self.state = blk[:, -1:].copy()
        return y


def resonator(freq_hz: float, bandwidth_hz: float, fs: float, lanes: int) -> AllPole:
    """A second-order resonator with unit output variance for unit white input."""
    r = math.exp(-math.pi * bandwidth_hz / fs)
    theta = 2.0 * math.pi * freq_hz / fs
    a1, a2 = -2.0 * r * math.cos(theta), r * r
    # Output variance of an AR(2) driven by unit white noise (Box & Jenkins).
    var = (1 + a2) / ((1 - a2) * ((1 + a2) ** 2 - a1 * a1))
    return AllPole((a1, a2), 1.0 / math.sqrt(var), lanes)


class PinkNoise:
    """Approximate 1/f^chi noise between ``f_lo`` and ``f_hi``, unit-ish variance per lane."""

    def __init__(
        self, fs: float, f_lo: float, f_hi: float, chi: float, lanes: int, per_decade: float = 1.5
    ) -> None:
        n = max(2, math.ceil(math.log10(f_hi / f_lo) * per_decade) + 1)
        corners = np.geomspace(f_lo, min(f_hi, fs / 4.0), n)
        self._filters: list[AllPole] = []
        weights = []
        for fc in corners:
            a = math.exp(-2.0 * math.pi * fc / fs)
            # Unit-variance AR(1): input gain sqrt(1 - a^2); plateau height ~ 1/fc, so
            # weight^2 ~ fc^(1-chi) puts every plateau on the fc^-chi line.
            self._filters.append(AllPole((-a,), math.sqrt(1 - a * a), lanes))
            weights.append(fc ** ((1.0 - chi) / 2.0))
        w = np.asarray(weights)
        self._weights = w / math.sqrt(float(np.sum(w * w)))
        self.lanes = lanes

    def __call__(self, rng: np.random.Generator, n: int) -> FloatArray:
        """The next ``n`` samples of every lane, shape (lanes, n)."""
        out = np.zeros((self.lanes, n))
        for w, f in zip(self._weights, self._filters, strict=True):
            out += w * f(rng.standard_normal((self.lanes, n)))
        return out
