"""The aggregator's Flower ServerApp: one SecAgg+ round per (metric, period), decoded and stored.

The server sees masked vectors only (Flower's ``SecAggPlusWorkflow``); after
unmasking it holds the integer sum of the surviving devices' noisy grid values
and their count. It publishes ``mean = lower + step * sum / count`` with the
noise's standard deviation only when ``count >= min_cohort``; otherwise the
round is recorded as ``withheld`` with no value at all. A masked vector of the
wrong shape is dropped before summation (its sender is then handled as a
dropout); a decoded sum outside what ``count`` grid values plus 12 noise sds
can reach is withheld as ``implausible`` (a device sent a garbage value).

Results go to the collector's SQLite database, table ``secagg_rounds``
(``edgetwin collector --aggregate`` lists them).

Run config keys (``flwr run --run-config``, set by ``edgetwin collector --flower``):
``metric``, ``period``, ``period-start``, ``round-id``, ``db``, ``expected``
(devices to wait for), ``lower``, ``upper``, ``levels``, ``epsilon``, ``delta``,
``min-cohort``, ``num-shares``, ``threshold`` (fraction), ``timeout``.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from edgetwin.privacy.discrete import SharePlan, plan_for
from edgetwin.privacy.metrics import get_metric

_LOGGER = logging.getLogger(__name__)

TABLE = "secagg_rounds"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    round_id TEXT PRIMARY KEY,
    metric TEXT NOT NULL, unit TEXT NOT NULL, period TEXT NOT NULL, period_start REAL NOT NULL,
    state TEXT NOT NULL,            -- published | withheld | implausible | aborted
    devices INTEGER NOT NULL,       -- survivors whose shares are in the sum
    sampled INTEGER NOT NULL,       -- devices the round started with
    mean REAL, noise_sd REAL, total INTEGER,   -- NULL unless published
    epsilon REAL NOT NULL, delta REAL NOT NULL, min_cohort INTEGER NOT NULL,
    levels INTEGER NOT NULL, lower REAL NOT NULL, upper REAL NOT NULL,
    server_s REAL NOT NULL, created REAL NOT NULL, reason TEXT
)"""
# A decoded sum further than this many noise sds outside [0, n * levels] cannot be honest.
_PLAUSIBLE_SDS = 12.0


@dataclass(frozen=True)
class RoundConfig:
    """One round: what is aggregated, under which plan, how many devices, which protocol."""

    metric: str
    period: str
    period_start: float
    round_id: str
    db: str
    expected: int
    plan: SharePlan
    num_shares: float
    threshold: float
    timeout: float

    @classmethod
    def from_run_config(cls, rc: dict[str, Any]) -> RoundConfig:
        plan = plan_for(float(rc["lower"]), float(rc["upper"]), int(rc["levels"]),
                        float(rc["epsilon"]), float(rc["delta"]), int(rc["min-cohort"]))
        expected = int(rc["expected"])
        if expected > plan.max_devices:
            raise ValueError(f"{expected} devices could wrap the sum mod 2**32 "
                             f"(at most {plan.max_devices} with this plan)")
        return cls(metric=get_metric(str(rc["metric"])).name, period=str(rc["period"]),
                   period_start=float(rc["period-start"]), round_id=str(rc["round-id"]),
                   db=str(rc["db"]), expected=expected, plan=plan,
                   num_shares=float(rc.get("num-shares", 1.0)),
                   threshold=float(rc.get("threshold", 0.5)),
                   timeout=float(rc.get("timeout", 60.0)))

    def fit_config(self) -> dict[str, Any]:
        """What each device checks against its share before it submits (flower_client)."""
        p = self.plan
        return {"metric": self.metric, "period": self.period, "period_start": self.period_start,
                "round_id": self.round_id, "lower": p.lower, "upper": p.upper,
                "levels": p.levels, "epsilon": p.epsilon, "delta": p.delta,
                "min_cohort": p.min_cohort, "clip_range": p.clip_range}


@dataclass(frozen=True)
class RoundResult:
    """What a round published, or why it did not."""

    state: str
    devices: int
    sampled: int
    mean: float | None
    noise_sd: float | None
    total: int | None
    reason: str | None


def decide(cfg: RoundConfig, mean_grid: float | None, devices: int, sampled: int) -> RoundResult:
    """Publish, withhold (too few survivors / implausible sum) or abort; pure."""
    p = cfg.plan
    if mean_grid is None:
        return RoundResult("aborted", devices, sampled, None, None, None,
                           "secure aggregation did not complete (too few devices kept up)")
    if devices < p.min_cohort:
        return RoundResult("withheld", devices, sampled, None, None, None,
                           f"{devices} survivors < min_cohort {p.min_cohort}: nothing released")
    total = round(mean_grid * devices)
    slack = _PLAUSIBLE_SDS * p.sigma_share * math.sqrt(devices)
    if not -slack <= total <= devices * p.levels + slack:
        return RoundResult("implausible", devices, sampled, None, None, None,
                           f"decoded sum {total} outside what {devices} shares can reach")
    return RoundResult("published", devices, sampled, p.decode_mean(total, devices),
                       p.mean_noise_sd(devices), total, None)


def store_result(cfg: RoundConfig, result: RoundResult, server_s: float) -> None:
    """Write the round into the collector database (SQLite), once per round id."""
    p = cfg.plan
    with closing(sqlite3.connect(cfg.db, timeout=30)) as db, db:
        db.execute(_SCHEMA)
        db.execute(
            f"INSERT OR IGNORE INTO {TABLE} VALUES "  # noqa: S608 - constant table name
            "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (cfg.round_id, cfg.metric, get_metric(cfg.metric).unit, cfg.period,
             cfg.period_start, result.state, result.devices, result.sampled, result.mean,
             result.noise_sd, result.total, p.epsilon, p.delta, p.min_cohort, p.levels,
             p.lower, p.upper, server_s, time.time(), result.reason))


def rounds(db_path: str) -> list[dict[str, Any]]:
    """Every stored round, newest period first (``collector --aggregate``)."""
    from pathlib import Path

    path = Path(db_path).resolve()
    if not path.exists():
        return []
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)) as db:
        known = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                           (TABLE,)).fetchone()
        if known is None:
            return []
        db.row_factory = sqlite3.Row
        rows = db.execute(f"SELECT * FROM {TABLE} "  # noqa: S608 - constant table name
                          "ORDER BY period_start DESC, metric").fetchall()
    return [dict(r) for r in rows]


def make_server_app(wrap_grid: Callable[[Any], Any] | None = None) -> Any:
    """The Flower ServerApp; ``wrap_grid`` may wrap the Grid (tests capture what arrives)."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        cfg = RoundConfig.from_run_config(dict(context.run_config))
        run_round(wrap_grid(grid) if wrap_grid else grid, context, cfg)

    return app


def run_round(grid: Any, context: Any, cfg: RoundConfig) -> RoundResult:
    """One SecAgg+ round over ``cfg.expected`` devices; stores and returns what it decided."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    seen: dict[str, Any] = {}

    class Recorder(FedAvg):
        def aggregate_fit(self, rnd: int, results: Any, failures: Any) -> Any:
            seen["devices"] = len(results)
            if results:
                from flwr.common import parameters_to_ndarrays

                seen["mean"] = float(parameters_to_ndarrays(results[0][1].parameters)[0][0])
            return super().aggregate_fit(rnd, results, failures)

        def configure_fit(self, rnd: int, parameters: Any, client_manager: Any) -> Any:
            chosen = super().configure_fit(rnd, parameters, client_manager)
            seen["sampled"] = len(chosen)
            return chosen

    strategy = Recorder(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=cfg.expected,
        min_available_clients=cfg.expected, min_evaluate_clients=0,
        on_fit_config_fn=lambda _rnd: cfg.fit_config(),
        initial_parameters=ndarrays_to_parameters([np.zeros(1)]),
        accept_failures=True,
    )
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=1, round_timeout=None),
                           strategy=strategy)
    c = cfg.plan.clip_range
    # Flower reads a float as a fraction of the sampled devices and an int as a count
    shares: int | float = int(cfg.num_shares) if cfg.num_shares > 1 else cfg.num_shares
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=shares, reconstruction_threshold=cfg.threshold,
        max_weight=1.0, clipping_range=float(c), quantization_range=2 * c,
        modulus_range=2**32, timeout=cfg.timeout))
    t0 = time.process_time()
    try:
        workflow(cast("Any", ShapeCheckingGrid(grid)), legacy)
    except Exception as exc:  # noqa: BLE001 - Flower raises anything; the round is aborted
        _LOGGER.warning("round %s aborted: %s", cfg.round_id, exc)
        seen.pop("mean", None)
    result = decide(cfg, seen.get("mean"), int(seen.get("devices", 0)),
                    int(seen.get("sampled", 0)))
    store_result(cfg, result, time.process_time() - t0)
    _LOGGER.info("round %s: %s (%d of %d devices)", cfg.round_id, result.state, result.devices,
                 result.sampled)
    return result


class ShapeCheckingGrid:
    """A Grid that drops masked vectors of the wrong form before the workflow sums them."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> Any:
        replies = list(self._inner.send_and_receive(messages, timeout=timeout))
        return [m for m in replies if _well_formed(m)]


def _well_formed(msg: Any) -> bool:
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    if msg.has_error():
        return True  # the workflow counts it as a failure itself
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is None or Key.MASKED_PARAMETERS not in configs:
        return True
    try:
        arrays = [bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]]
        ok = (len(arrays) == 2 and all(a.shape == (1,) for a in arrays)
              and all(np.issubdtype(a.dtype, np.integer) for a in arrays)
              and all(0 <= int(a[0]) < 2**32 for a in arrays))
    except Exception:  # noqa: BLE001 - any undecodable payload is malformed
        ok = False
    if not ok:
        _LOGGER.warning("dropped a malformed masked vector from node %s",
                        msg.metadata.src_node_id)
    return ok
