"""Distributed discrete Gaussian: the integer grid, the per-device share plan, OpenDP sampling.

A summary in ``[lower, upper]`` is clipped, mapped onto the integer grid
``0..levels`` (``q = round((x - lower) / step)``, ``step = (upper - lower) /
levels``) and a discrete Gaussian share of scale ``sigma_share`` is added by
OpenDP's integer-domain Gaussian measurement (no sampler is written here). The
sum over ``n`` devices carries discrete Gaussian shares of total variance ``n *
sigma_share**2``; ``sigma_share = sigma_central / sqrt(min_cohort)``, so any
``n >= min_cohort`` honest survivors give at least the central noise.

Privacy numbers are OpenDP's: the zCDP of the Gaussian measurement converted
to (epsilon, delta) by ``make_zCDP_to_approxDP`` / ``make_fix_delta``. The sum
of discrete Gaussians is not exactly a discrete Gaussian; Kairouz et al. (ICML
2021, Thm. 12) bound the gap by ``tau``; :func:`plan_for` refuses a plan whose
``tau`` is not negligible (see docs/secagg.md).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

from edgetwin.privacy import noise_process

# Masks and sums live in Z_M; Flower's SecAgg+ needs M = 2**k and at most 2**32.
MODULUS = 2**32
# A share further than this many sigmas from its grid value is never seen in practice
# (probability below exp(-450)); the clip range covers it and a larger one is refused.
_TAIL_SIGMAS = 30.0
# Kairouz et al.'s tau (the sum's distance from a discrete Gaussian) must stay below this.
_TAU_MAX = 1e-9
# plans made by the OpenDP child (noise_process), by their parameters: a plan is a pure
# function of them, so the daemon asks the child once per metric
_CHILD_PLANS: dict[tuple[float, float, int, float, float, int], SharePlan] = {}


@dataclass(frozen=True)
class SharePlan:
    """How one metric is encoded and noised: the grid, both sigmas and what they guarantee."""

    lower: float
    upper: float
    levels: int  # grid points above lower; the sensitivity in grid units
    epsilon: float  # central epsilon of the sum of >= min_cohort honest shares
    delta: float
    min_cohort: int
    sigma_central: float  # grid units
    sigma_share: float  # grid units; sigma_central / sqrt(min_cohort)
    epsilon_own: float  # a device's own share alone at ``delta`` (all others colluding)
    rho_central: float  # zCDP of the sum at min_cohort shares, tau included
    tau: float
    clip_range: int  # |share value| <= clip_range (a power of 2, Flower's clipping_range)
    max_devices: int  # shares per round before the modular sum could wrap

    @property
    def step(self) -> float:
        """Value units per grid unit."""
        return (self.upper - self.lower) / self.levels

    def encode(self, summary: float) -> int:
        """The clipped summary on the integer grid ``0..levels``."""
        if not math.isfinite(summary):
            raise ValueError(f"summary {summary!r} is not a finite number")
        clipped = min(max(float(summary), self.lower), self.upper)
        return int(min(max(round((clipped - self.lower) / self.step), 0), self.levels))

    def decode_mean(self, total: int, count: int) -> float:
        """The population mean in value units from the decoded integer sum of ``count`` shares."""
        if count <= 0:
            raise ValueError("no shares to decode")
        return self.lower + self.step * (total / count)

    def mean_noise_sd(self, count: int) -> float:
        """Standard deviation of the noise in a published mean of ``count`` shares (value units)."""
        return self.step * self.sigma_share * math.sqrt(count) / count

    def fields(self) -> dict[str, Any]:
        """The plan's fields, as ``SharePlan(**fields)`` takes them back."""
        return dataclasses.asdict(self)

    def to_json(self) -> dict[str, Any]:
        return {
            "lower": self.lower, "upper": self.upper, "levels": self.levels,
            "epsilon": self.epsilon, "delta": self.delta, "min_cohort": self.min_cohort,
            "sigma_central": self.sigma_central, "sigma_share": self.sigma_share,
            "epsilon_own": self.epsilon_own, "rho_central": self.rho_central, "tau": self.tau,
            "clip_range": self.clip_range, "max_devices": self.max_devices, "step": self.step,
        }


PLAN_PARAMS = ("lower", "upper", "levels", "epsilon", "delta", "min_cohort")


def plan_for(lower: float, upper: float, levels: int, epsilon: float, delta: float,
             min_cohort: int) -> SharePlan:
    """The (cached) share plan whose sum over ``min_cohort`` devices is (epsilon, delta)-DP.

    Inside ``noise_process.opendp_out_of_process`` (the daemon) OpenDP's calibration runs
    in the child and the plan is cached here; elsewhere it runs in this process."""
    key = (float(lower), float(upper), int(levels), float(epsilon), float(delta),
           int(min_cohort))
    child = noise_process.current()
    if child is None:
        return _plan(*key)
    plan = _CHILD_PLANS.get(key)
    if plan is None:
        fields = child.share_plan(**dict(zip(PLAN_PARAMS, key, strict=True)))
        try:
            plan = SharePlan(**fields)
        except TypeError as exc:
            raise noise_process.NoiseProcessError(
                f"the OpenDP process answered a plan with fields {sorted(fields)}") from exc
        if len(_CHILD_PLANS) >= 64:
            _CHILD_PLANS.clear()
        _CHILD_PLANS[key] = plan
    return plan


def add_share_noise(plan: SharePlan, value: int) -> int:
    """``value`` (on the grid) plus one discrete Gaussian share drawn by OpenDP (in the
    child inside ``noise_process.opendp_out_of_process``)."""
    if not 0 <= value <= plan.levels:
        raise ValueError(f"grid value {value} outside 0..{plan.levels}: encode it first")
    child = noise_process.current()
    if child is not None:
        noisy = child.share_noise(plan.fields(), int(value))
    else:
        noisy = int(_measurement(plan.sigma_share)(int(value)))
    if abs(noisy) > plan.clip_range:  # pragma: no cover - probability below exp(-450)
        raise ValueError(f"share {noisy} beyond the clip range {plan.clip_range}")
    return noisy


def epsilon_at(sigma: float, sensitivity: int, delta: float) -> float:
    """OpenDP's epsilon at ``delta`` for one discrete Gaussian of scale ``sigma``."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    try:
        meas = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(_measurement(sigma)), delta)
        return float(meas.map(int(sensitivity))[0])  # type: ignore[no-untyped-call]
    except dp.OpenDPException:
        return math.inf  # OpenDP overflows for a scale far too small: no guarantee at all


def rho_of(sigma: float, sensitivity: int) -> float:
    """OpenDP's zCDP rho of one discrete Gaussian of scale ``sigma``."""
    return float(_measurement(sigma).map(int(sensitivity)))


def kairouz_tau(sigma_share: float, n: int) -> float:
    """Kairouz et al.'s tau for a sum of ``n`` discrete Gaussian shares of scale sigma_share."""
    return 10.0 * sum(math.exp(-2.0 * math.pi**2 * sigma_share**2 * k / (k + 1))
                      for k in range(1, n))


def library() -> str:
    """The OpenDP version that sampled and accounted."""
    from importlib.metadata import version

    return f"opendp {version('opendp')}"


# -- private helpers ---------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _plan(lower: float, upper: float, levels: int, epsilon: float, delta: float,
          min_cohort: int) -> SharePlan:
    if not lower < upper:
        raise ValueError(f"lower {lower} must be below upper {upper}")
    if levels < 2:
        raise ValueError(f"levels {levels} must be at least 2")
    if not (epsilon > 0 and 0 < delta < 1):
        raise ValueError(f"need epsilon > 0 and 0 < delta < 1, not {epsilon}, {delta}")
    if min_cohort < 2:
        raise ValueError(f"min_cohort {min_cohort} must be at least 2")
    sigma = _smallest_sigma(levels, epsilon, delta)
    sigma_share = sigma / math.sqrt(min_cohort)
    tau = kairouz_tau(sigma_share, min_cohort)
    if tau > _TAU_MAX:
        raise ValueError(f"share scale {sigma_share:.3g} is too small for a sum of "
                         f"{min_cohort} discrete Gaussians (tau {tau:.2g}); use more levels")
    # Kairouz et al. Thm. 12 (d = 1): the sum is (1/2) eps_z**2-zCDP with
    # eps_z = min(sqrt(D^2/(n s^2) + tau/2), D/(sqrt(n) s) + tau).
    base = levels / (math.sqrt(min_cohort) * sigma_share)
    eps_z = min(math.sqrt(base**2 + tau / 2), base + tau)
    clip = 1 << math.ceil(math.log2(levels + _TAIL_SIGMAS * sigma_share + 1))
    return SharePlan(
        lower=lower, upper=upper, levels=levels, epsilon=epsilon, delta=delta,
        min_cohort=min_cohort, sigma_central=sigma, sigma_share=sigma_share,
        epsilon_own=epsilon_at(sigma_share, levels, delta), rho_central=eps_z**2 / 2, tau=tau,
        clip_range=clip, max_devices=(MODULUS - 1) // (2 * clip),
    )


def _smallest_sigma(levels: int, epsilon: float, delta: float) -> float:
    """Bisect (in log space) the smallest scale OpenDP certifies at (epsilon, delta)."""
    lo, hi = levels / 1000.0, levels * 1000.0
    if epsilon_at(hi, levels, delta) > epsilon:
        raise ValueError(f"epsilon {epsilon} at delta {delta} needs an absurd noise scale")
    for _ in range(64):
        mid = math.sqrt(lo * hi)
        if epsilon_at(mid, levels, delta) <= epsilon:
            hi = mid
        else:
            lo = mid
        if hi / lo < 1 + 1e-9:
            break
    return hi


@functools.lru_cache(maxsize=64)
def _measurement(sigma: float) -> Any:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp.m.make_gaussian(dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"),
                              scale=float(sigma))
