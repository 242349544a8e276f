"""Torch training loops: GAIN (with hint mechanism) and the quantile forecaster."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from edgetwin.inference.fill import CLIP, center, imputer_feeds

from .nets import Forecaster, GainDiscriminator, GainGenerator
from .spec import IMPUTE_WINDOW, N_FEATURES, QUANTILES, TARGET_INDEX

_LOGGER = logging.getLogger(__name__)


def drop_spans(m: np.ndarray, rng: np.random.Generator, max_len: int = 12) -> np.ndarray:
    """A copy of mask ``m`` (n, W, F) with spans removed on purpose.

    Each window loses 1-2 spans of 1..max_len steps, either of one feature or of
    every feature at once (a sensor dropping out), at a random place (a third of
    them at the window's end, the live case), plus 3 % of cells at random.
    """
    n, w, f = m.shape
    keep = np.ones_like(m)
    steps = np.arange(w)
    observed = m.any(axis=1)  # (n, f)
    for span in range(2):
        use = np.ones(n, bool) if span == 0 else rng.random(n) < 0.5
        length = rng.integers(1, max_len + 1, n)
        at_end = rng.random(n) < 1 / 3
        start = np.where(at_end, w - length, np.floor(rng.random(n) * (w - length + 1)).astype(int))
        in_span = (steps[None] >= start[:, None]) & (steps[None] < (start + length)[:, None])
        in_span &= use[:, None]
        feat = (rng.random((n, f)) * observed).argmax(axis=1)
        one = np.zeros((n, f), bool)
        one[np.arange(n), feat] = True
        cols = np.where((rng.random(n) < 0.5)[:, None], one, True)
        keep &= ~(in_span[:, :, None] & cols[:, None, :])
    keep &= rng.random(m.shape) > 0.03
    return m & keep


def train_gain(
    z: np.ndarray,
    m: np.ndarray,
    weights: np.ndarray,
    seed: int,
    iters: int = 4000,
    batch: int = 256,
    alpha: float = 10.0,
) -> GainGenerator:
    """GAIN: G fills masked cells, D guesses which cells were observed given a hint.

    Beyond the paper's reconstruction term on observed cells, G is also scored
    on cells we hid on purpose (their truth is known), which is what teaches it
    to fill spans; the adversarial term keeps fills distributionally plausible.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = z.shape[0]
    d = IMPUTE_WINDOW * N_FEATURES
    gen, disc = GainGenerator(), GainDiscriminator()
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(opt_g, iters)
    hint_rate = 0.9
    p = weights / weights.sum()
    t0 = time.monotonic()
    for it in range(iters):
        idx = rng.choice(n, batch, p=p)
        m_true = m[idx]
        m_in = drop_spans(m_true, rng)
        zb = np.where(m_true, z[idx], 0.0).astype(np.float32)
        # GAIN starts missing cells from noise; we start from linear interpolation of
        # the window centred on its observed mean (imputer_feeds, as the runtime does),
        # plus a little noise, and G learns the residual. Truth is centred alike.
        jit = rng.normal(0, 0.03, m_in.shape).astype(np.float32)  # ~ one int8 step
        feeds, offset, scale = imputer_feeds(zb + jit, m_in)
        xz = torch.from_numpy(np.clip((zb - offset) / scale, -CLIP, CLIP).reshape(batch, d))
        mt = torch.from_numpy(m_true.reshape(batch, d).astype(np.float32))
        mi = torch.from_numpy(feeds["mask"])
        x_in = torch.from_numpy(feeds["z"]) + (1 - mi) * torch.rand(batch, d) * 0.01
        g = gen(x_in, mi)
        x_hat = mi * xz + (1 - mi) * g
        b = (torch.rand(batch, d) < hint_rate).float()
        hint = b * mi + 0.5 * (1 - b)
        # discriminator step
        logits = disc(x_hat.detach(), hint)
        loss_d = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, mi, weight=1 - b + 1e-3
        )
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        # generator step
        logits = disc(x_hat, hint)
        adv = -((1 - mi) * torch.nn.functional.logsigmoid(logits)).sum() / (1 - mi).sum().clamp(
            min=1
        )
        hidden = mt * (1 - mi)
        rec_hidden = ((g - xz) ** 2 * hidden).sum() / hidden.sum().clamp(min=1)
        rec_obs = ((g - xz) ** 2 * mi).sum() / mi.sum().clamp(min=1)
        loss_g = 0.1 * adv + alpha * rec_hidden + rec_obs
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        sched_g.step()
        if it % 500 == 0 or it == iters - 1:
            _LOGGER.info(
                "gain %5d  D %.3f  adv %.3f  mse(hidden) %.4f  mse(obs) %.4f  %.0fs",
                it,
                loss_d.item(),
                adv.item(),
                rec_hidden.item(),
                rec_obs.item(),
                time.monotonic() - t0,
            )
    gen.eval()
    return gen


def pinball(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Quantile loss; pred (B,H,K,Q), y and mask (B,H,K)."""
    q = torch.tensor(QUANTILES).view(1, 1, 1, -1)
    diff = y.unsqueeze(-1) - pred
    loss = torch.maximum(q * diff, (q - 1) * diff) * mask.unsqueeze(-1)
    return loss.sum() / (mask.sum() * len(QUANTILES)).clamp(min=1)


def init_skip(
    net: Forecaster, x: np.ndarray, y: np.ndarray, y_mask: np.ndarray, alpha: float
) -> None:
    """Closed-form ridge for the skip path: last ``skip_steps`` of x -> each (horizon, target).

    Every quantile of an output starts from the same ridge median; training
    then moves the band apart and the LSTM learns what the ridge misses.
    """
    s = net.skip_steps
    n = x.shape[0]
    a = x[:, -s:, : net.n_targets].reshape(n, -1).astype(np.float64)
    h, k, q = net.out_shape
    w = np.zeros((h, k, q, a.shape[1]))
    reg = alpha * np.eye(a.shape[1])
    for j in range(k):
        for hh in range(h):
            sel = y_mask[:, hh, j]
            if sel.sum() < 10 * a.shape[1] ** 0.5:
                continue
            aa = a[sel]
            w[hh, j, :, :] = np.linalg.solve(aa.T @ aa + reg, aa.T @ y[sel, hh, j])
    with torch.no_grad():
        net.skip.weight.copy_(torch.from_numpy(w.reshape(h * k * q, -1).astype(np.float32)))


def train_forecaster(
    x: np.ndarray,
    y: np.ndarray,
    y_mask: np.ndarray,
    weights: np.ndarray,
    scale: np.ndarray,
    seed: int,
    iters: int = 3000,
    batch: int = 256,
    hidden: int = 32,
    min_context: int = 12,
    validate: Callable[[Forecaster], float] | None = None,
    every: int = 250,
) -> tuple[Forecaster, list[tuple[int, float]]]:
    """Fit on (n, T, 2F) contexts; 10 % of samples get their oldest steps masked out.

    The pinball loss is weighted by each window's spread (``scale``, z units), so
    it is a loss in the person's standardised units, not in each window's own:
    a quiet window must not count as much as a lively one. The skip path starts
    from a closed-form ridge. ``validate(net) -> score`` (lower is better) is
    called every ``every`` iterations; the best state is kept (the choice is made
    on the validation people, never the test people).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    net = Forecaster(hidden=hidden)
    net.hidden_noise = (
        0.0  # the explicit noisy loop is 5x slower; weight-only int8 keeps fp32 maths
    )
    pick = rng.choice(len(x), size=min(len(x), 20000), replace=False)
    init_skip(net, x[pick], y[pick], y_mask[pick], alpha=30.0)
    opt = torch.optim.AdamW(
        [
            {"params": [p for nme, p in net.named_parameters() if nme != "skip.weight"]},
            {"params": [net.skip.weight], "lr": 3e-4, "weight_decay": 0.0},
        ],
        lr=3e-3,
        weight_decay=1e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[3e-3, 3e-4], total_steps=iters, pct_start=0.1
    )
    p = weights / weights.sum()
    n, t, _ = x.shape
    h, k, q = net.out_shape
    t0 = time.monotonic()
    history: list[tuple[int, float]] = []
    best: tuple[float, dict] | None = None
    tix = list(TARGET_INDEX)
    for it in range(iters):
        idx = rng.choice(n, batch, p=p)
        xb = x[idx].copy()
        yb = y[idx].copy()
        wb = scale[idx].astype(np.float32).copy()  # (B, K)
        nf = xb.shape[2] // 2
        cut = rng.random(batch) < 0.1
        if cut.any():
            for i in np.flatnonzero(cut):
                xb[i, : int(rng.integers(1, t - min_context + 1))] = 0.0
            # a shorter context has another level and spread: normalise again, as the
            # runtime would (cells without a value stay 0), targets alike
            obs = xb[:, :, nf:] > 0
            has = obs | (xb[:, :, :nf] != 0)
            zn, level, spread = center(np.where(has, xb[:, :, :nf], np.nan), obs)
            xb[cut, :, :nf] = zn[cut]
            yb[cut] = (yb[cut] - level[cut][:, :, tix]) / spread[cut][:, :, tix]
            wb[cut] *= spread[cut][:, 0, tix]
        # input jitter of about one int8 step: robustness to quantisation
        obs = xb[:, :, nf:] > 0
        xb[:, :, :nf] += np.where(obs, rng.normal(0, 0.02, obs.shape).astype(np.float32), 0)
        xt = torch.from_numpy(xb).transpose(0, 1).contiguous()  # (T,B,2F)
        out, _attn = net(xt)
        pred = out[0].view(batch, h, k, q)
        mb = y_mask[idx].astype(np.float32) * wb[:, None, :]
        loss = pinball(pred, torch.from_numpy(yb), torch.from_numpy(mb))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        net.clamp_score()
        sched.step()
        if validate is not None and ((it + 1) % every == 0 or it == iters - 1):
            net.eval()
            score = validate(net)
            net.train()
            history.append((it + 1, score))
            if best is None or score < best[0]:
                best = (score, {kk: v.clone() for kk, v in net.state_dict().items()})
            _LOGGER.info("forecaster %5d  val %.4f  %.0fs", it + 1, score, time.monotonic() - t0)
        elif it % 250 == 0:
            _LOGGER.info(
                "forecaster %5d  pinball %.4f  %.0fs", it, loss.item(), time.monotonic() - t0
            )
    if best is not None:
        net.load_state_dict(best[1])
    net.eval()
    return net, history
