"""The two networks: a GAIN imputer (generator, discriminator) and an LSTM-attention forecaster.

Both are shaped for a lean ONNX graph: flat inputs, seq-first LSTM layout (the
ONNX LSTM op's native one, so no Transpose), and flat outputs that the runtime
reshapes in numpy for free.
"""

from __future__ import annotations

import torch
from torch import nn

from .spec import CONTEXT, HORIZON, IMPUTE_WINDOW, N_FEATURES, QUANTILES, TARGETS


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
    """LSTM over the context, attention pooling, quantile heads.

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
    ):
        super().__init__()
        self.lstm = nn.LSTM(2 * n_features, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)
        self.pos_bias = nn.Parameter(torch.zeros(context, 1, 1))
        self.head = nn.Linear(2 * hidden, horizon * n_targets * n_quantiles)
        self.out_shape = (horizon, n_targets, n_quantiles)

    # Training-time noise on the LSTM's outputs (std, z units): teaches the
    # attention and heads not to hinge on differences int8 rounding erases.
    hidden_noise = 0.02

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, (h, _c) = self.lstm(x)  # y (T,B,H); h (1,B,H)
        if self.training and self.hidden_noise > 0:
            y = y + self.hidden_noise * torch.randn_like(y)
            h = h + self.hidden_noise * torch.randn_like(h)
        attn = torch.softmax(self.score(y) + self.pos_bias, dim=0)  # (T,B,1)
        ctx = (attn * y).sum(dim=0, keepdim=True)  # (1,B,H)
        out = self.head(torch.cat([ctx, h], dim=2))  # (1,B,H*K*Q)
        return out, attn
