"""The two networks: a GAIN imputer (generator, discriminator) and an LSTM-attention forecaster.

Both are shaped for a lean ONNX graph: flat inputs, seq-first LSTM layout (the
ONNX LSTM op's native one, so no Transpose), and flat outputs that the runtime
reshapes in numpy for free.
"""

from __future__ import annotations

import torch
from torch import nn

from .spec import CONTEXT, HORIZON, IMPUTE_WINDOW, N_FEATURES, QUANTILES, SKIP_STEPS, TARGETS


class GainGenerator(nn.Module):
    """G(x̃, m) -> a value for every cell of the window (Yoon et al. 2018, over windows).

    Inputs ``z`` and ``mask`` are ``(B, W*F)`` (steps x features, row-major):
    the standardised window whose missing cells hold the linear-interpolation
    fill (``edgetwin.inference.fill``; GAIN's paper starts from noise), and the
    mask (1 observed). Output ``g`` ``(B, W*F)`` = fill + learned residual; the
    caller keeps observed cells and takes ``g`` only where the mask is 0.
    """

    def __init__(
        self, window: int = IMPUTE_WINDOW, n_features: int = N_FEATURES, hidden: int = 128
    ):
        super().__init__()
        d = window * n_features
        self.net = nn.Sequential(
            nn.Linear(2 * d, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, d),
        )
        self.d = d

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return z + self.net(torch.cat([z, mask], dim=1))


class GainDiscriminator(nn.Module):
    """D(x̂, h) -> per-cell probability that the cell was observed, given the hint ``h``."""

    def __init__(
        self, window: int = IMPUTE_WINDOW, n_features: int = N_FEATURES, hidden: int = 128
    ):
        super().__init__()
        d = window * n_features
        self.net = nn.Sequential(
            nn.Linear(2 * d, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, d),
        )

    def forward(self, x_hat: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x_hat, hint], dim=1))  # logits


class Forecaster(nn.Module):
    """LSTM over the context, attention pooling, quantile heads, plus a linear skip path.

    The skip path is a linear map of the last ``skip_steps`` steps of the
    targets' values straight to the outputs: a ridge AR on the recent past,
    initialised in closed form (``training.init_skip``), which real 5 s heart
    rate needs (it is mostly noise around a slowly moving level) and which the
    LSTM then corrects.

    Input ``x``: ``(T, B, 2F)`` seq-first (values then mask per step).
    Outputs: ``quantiles`` ``(1, B, HORIZON*K*Q)`` ordered (horizon, target,
    quantile), and ``attention`` ``(T, B, 1)`` summing to 1 over T.
    Attention score of step t is ``y_t·v + b_t``: content plus a learned
    per-position bias (recency), so weights are cheap and explainable.
    """

    def __init__(
        self,
        n_features: int = N_FEATURES,
        hidden: int = 32,
        context: int = CONTEXT,
        horizon: int = HORIZON,
        n_targets: int = len(TARGETS),
        n_quantiles: int = len(QUANTILES),
        skip_steps: int = SKIP_STEPS,
    ):
        super().__init__()
        self.skip_steps = skip_steps
        # the targets are the first n_targets features (spec.TARGET_INDEX): one Slice selects them
        self.n_targets = n_targets
        self.skip = nn.Linear(skip_steps * n_targets, horizon * n_targets * n_quantiles, bias=False)
        nn.init.zeros_(self.skip.weight)
        self.lstm = nn.LSTM(2 * n_features, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)
        self.pos_bias = nn.Parameter(torch.zeros(context, 1, 1))
        self.head = nn.Linear(2 * hidden, horizon * n_targets * n_quantiles)
        self.out_shape = (horizon, n_targets, n_quantiles)

    # Quantisation-aware training, lite: in training the recurrence runs as an
    # explicit loop with noise on the hidden state at every step (what int8
    # dynamic quantisation of h does at run time), so the learned dynamics do
    # not amplify rounding over 60 steps. Export and eval use nn.LSTM with the
    # same weights: one ONNX LSTM op.
    hidden_noise = 0.01
    # |v| is kept below this: attention scores then move by at most |v| x the
    # rounding error of y, which keeps int8 attention within 1 % of fp32.
    max_score_norm = 0.5

    def _noisy_lstm(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lstm = self.lstm
        t, b, _ = x.shape
        hid = lstm.hidden_size
        xw = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0  # (T,B,4H)
        h = x.new_zeros(b, hid)
        c = x.new_zeros(b, hid)
        ys = []
        for k in range(t):
            gates = xw[k] + h @ lstm.weight_hh_l0.T
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            h = h + self.hidden_noise * torch.randn_like(h)
            ys.append(h)
        return torch.stack(ys), h.unsqueeze(0)

    def clamp_score(self) -> None:
        """Project the attention score vector back into its norm ball (call after each step)."""
        with torch.no_grad():
            w = self.score.weight
            norm = w.norm()
            if norm > self.max_score_norm:
                w.mul_(self.max_score_norm / norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and self.hidden_noise > 0:
            y, h = self._noisy_lstm(x)
        else:
            y, (h, _c) = self.lstm(x)  # y (T,B,H); h (1,B,H)
        attn = torch.softmax(self.score(y) + self.pos_bias, dim=0)  # (T,B,1)
        ctx = (attn * y).sum(dim=0, keepdim=True)  # (1,B,H)
        out = self.head(torch.cat([ctx, h], dim=2))  # (1,B,H*K*Q)
        # Flatten (not reshape) exports as one ONNX op without a shape chain
        recent = x[-self.skip_steps :, :, : self.n_targets].transpose(0, 1).flatten(1)  # (B, S*K)
        return out + self.skip(recent), attn
