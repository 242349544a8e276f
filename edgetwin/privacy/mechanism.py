"""OpenDP's Laplace mechanism over a clipped summary, and minting of DPReleases.

No noise is sampled here: OpenDP draws it (its samplers are exact and immune to
the floating-point attacks on textbook Laplace). The measurement's input domain
is the bounded scalar ``[lower, upper]`` with the absolute distance metric; a
person-period may move the summary anywhere in that interval, so the input
distance is ``upper - lower`` and OpenDP's own privacy map confirms the release
costs at most the requested epsilon.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from typing import Any

from edgetwin.privacy import noise_process
from edgetwin.privacy.metrics import PERIOD_SECONDS, Metric
from edgetwin.privacy.release import MECHANISM, RELEASE_SCHEMA, DPRelease, _mint

_LOGGER = logging.getLogger(__name__)


class LaplaceMechanism:
    """A Laplace measurement for one (bounds, epsilon): summary in, noisy value out."""

    def __init__(self, lower: float, upper: float, epsilon: float) -> None:
        if not lower < upper:
            raise ValueError(f"lower {lower} must be below upper {upper}")
        if not epsilon > 0:
            raise ValueError(f"epsilon {epsilon} must be greater than 0")
        self.lower = float(lower)
        self.upper = float(upper)
        self.epsilon = float(epsilon)
        self.sensitivity = self.upper - self.lower
        self._measurement, self.scale = _build(self.lower, self.upper, self.epsilon)

    @property
    def library(self) -> str:
        return _library()

    def __call__(self, summary: float) -> float:
        """One noisy release of ``summary``, which must lie within the bounds."""
        if not self._domain_member(summary):
            raise ValueError(
                f"summary {summary} lies outside [{self.lower}, {self.upper}]: clip it first"
            )
        return float(self._measurement(float(summary)))

    def _domain_member(self, summary: float) -> bool:
        # OpenDP does not check domain membership on invoke; we do, since the
        # privacy guarantee holds only for inputs inside the bounded domain.
        return bool(self._measurement.input_domain.member(float(summary)))


def mechanism_for(lower: float, upper: float, epsilon: float) -> LaplaceMechanism:
    """A cached mechanism: building and calibrating one costs milliseconds."""
    return _cached(float(lower), float(upper), float(epsilon))


def release_value(
    metric: Metric,
    period: str,
    period_start: float,
    summary: float,
    bounds: tuple[float, float],
    epsilon: float,
    *,
    now: float | None = None,
) -> DPRelease:
    """Noise ``summary`` with OpenDP and mint the DPRelease; the caller charges the budget."""
    child = noise_process.current()
    if child is not None:  # the daemon: OpenDP runs in a child process, never mapped here
        noised = child.laplace(float(bounds[0]), float(bounds[1]), float(epsilon), summary)
        value, scale, sensitivity = noised.value, noised.scale, noised.sensitivity
    else:
        mech = mechanism_for(bounds[0], bounds[1], epsilon)
        value, scale, sensitivity = mech(summary), mech.scale, mech.sensitivity
    return _mint(
        schema=RELEASE_SCHEMA,
        id=uuid.uuid4().hex,
        metric=metric.name,
        unit=metric.unit,
        period=period,
        period_start=period_start,
        period_end=period_start + PERIOD_SECONDS[period],
        value=value,
        mechanism=MECHANISM,
        epsilon=epsilon,
        scale=scale,
        sensitivity=sensitivity,
        lower=float(bounds[0]),
        upper=float(bounds[1]),
        created=time.time() if now is None else now,
        library=_library(),
    )


# -- private helpers ---------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _cached(lower: float, upper: float, epsilon: float) -> LaplaceMechanism:
    return LaplaceMechanism(lower, upper, epsilon)


def _build(lower: float, upper: float, epsilon: float) -> tuple[Any, float]:
    """The OpenDP measurement and its scale, checked by OpenDP's own privacy map."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = dp.atom_domain(bounds=(lower, upper), nan=False), dp.absolute_distance(T=float)
    sensitivity = upper - lower

    def make(scale: float) -> Any:
        return dp.m.make_laplace(*space, scale=scale)

    scale = sensitivity / epsilon
    measurement = make(scale)
    if measurement.map(sensitivity) > epsilon:
        # Float rounding in the privacy map: let OpenDP find the smallest scale that holds.
        scale = float(dp.binary_search_param(make, d_in=sensitivity, d_out=epsilon))
        measurement = make(scale)
    spent = float(measurement.map(sensitivity))
    if spent > epsilon:  # pragma: no cover - OpenDP guarantees the search result
        raise AssertionError(f"OpenDP maps the release to epsilon {spent} > {epsilon}")
    _LOGGER.debug("laplace on [%s, %s] at epsilon %s: scale %s", lower, upper, epsilon, scale)
    return measurement, scale


@functools.cache
def _library() -> str:
    from importlib.metadata import version

    return f"opendp {version('opendp')}"
