"""The device's Flower ClientApp: one sealed SecAggShare into one SecAgg+ round, masked.

Flower's ``secaggplus_mod`` wraps the app: the server only ever receives the share
masked with pairwise and self masks in Z_(2**32); only the sum of the round's
survivors can be unmasked. The app hands the mod exactly one value, the ``value``
of a genuine :class:`~edgetwin.privacy.secagg.SecAggShare` claimed from the
device's encrypted twin (consent re-checked, the share marked ``submitted``
before it leaves, so it never enters a second round).

Flower's quantisation is made exact for integers: the share is sent with weight
``num_examples = 1 = max_weight`` and the server runs the workflow with
``clipping_range = C`` and ``quantization_range = 2C`` (``C`` the plan's clip
range), so ``quantize(x) = x + C`` with no stochastic rounding; the client checks
the round's plan (bounds, levels, epsilon, delta, min_cohort, C) equals its
share's before claiming it, and refuses a round that differs.

Node config (``flower-supernode --node-config``): ``edgetwin-home`` and
``passphrase-file`` (the twin and how to unlock it, read in the ClientApp
process; the share never touches disk outside the encrypted store).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgetwin.errors import EdgetwinError
from edgetwin.privacy.records import RecordStore
from edgetwin.privacy.secagg import SecAggShare, claim_share, require_genuine

_LOGGER = logging.getLogger(__name__)

# Keys of the round's fit config (set by the server app's strategy).
ROUND_KEYS = ("metric", "period", "period_start", "round_id", "lower", "upper", "levels",
              "epsilon", "delta", "min_cohort", "clip_range")


class RoundRefused(EdgetwinError):
    """This device does not submit to this round (no share, no consent, plan mismatch)."""


ShareClaimer = Callable[[dict[str, Any]], SecAggShare]


def share_vector(share: object, round_cfg: dict[str, Any]) -> list[np.ndarray[Any, Any]]:
    """The single-element vector a genuine share contributes, after checking the round's plan."""
    s = require_genuine(share)
    want: dict[str, str | float | int] = {
        "metric": s.metric, "period": s.period, "period_start": s.period_start,
        "lower": s.lower, "upper": s.upper, "levels": s.levels, "epsilon": s.epsilon,
        "delta": s.delta, "min_cohort": s.min_cohort, "clip_range": s.clip_range}
    for key, mine in want.items():
        theirs = round_cfg.get(key)
        if isinstance(mine, str):
            same = theirs == mine
        else:
            same = isinstance(theirs, int | float) and math.isclose(float(theirs), float(mine))
        if not same:
            raise RoundRefused(f"round asks {key}={theirs!r}, this device's share has {mine!r}")
    if abs(s.value) > s.clip_range:  # pragma: no cover - readmit refuses it already
        raise RoundRefused("share beyond its clip range")
    return [np.array([float(s.value)], dtype=np.float64)]


def store_claimer(home: Path, passphrase_file: Path) -> ShareClaimer:
    """Claim shares from the twin at ``home`` (opened per round, closed after)."""

    def claim(cfg: dict[str, Any]) -> SecAggShare:
        from edgetwin.store import Secret, TwinStore

        secret = Secret.passphrase(passphrase_file.read_text("utf-8").strip())
        store = TwinStore.open(home, secret)
        try:
            return claim_from(store, cfg)
        finally:
            store.close()

    return claim


def claim_from(store: RecordStore, cfg: dict[str, Any]) -> SecAggShare:
    """Check the round against the ready share, then claim it (marks it submitted)."""
    from edgetwin.privacy.secagg import KIND, ShareUnavailable, readmit, share_key

    entry = store.get_record(KIND, share_key(str(cfg["metric"]), str(cfg["period"]),
                                             float(cfg["period_start"])))
    if entry is None or entry.get("state") != "ready":
        raise RoundRefused(f"no ready share of {cfg['metric']} for {cfg['period_start']}")
    share_vector(readmit(entry["share"]), cfg)  # refuse a mismatched round before claiming
    try:
        return claim_share(store, str(cfg["metric"]), float(cfg["period_start"]),
                           str(cfg["round_id"]), time.time())
    except (ShareUnavailable, EdgetwinError) as exc:
        raise RoundRefused(str(exc)) from exc


def make_client_app(claimer_for: Callable[[dict[str, Any]], ShareClaimer] | None = None,
                    outer_mods: tuple[Any, ...] = ()) -> Any:
    """A Flower ClientApp with SecAgg+; ``claimer_for(node_config)`` finds the device's share.

    ``outer_mods`` run before Flower's ``secaggplus_mod`` (tests inject faults there).
    """
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp

    def default_claimer(node_config: dict[str, Any]) -> ShareClaimer:
        return store_claimer(Path(str(node_config["edgetwin-home"])),
                             Path(str(node_config["passphrase-file"])))

    make_claimer = claimer_for or default_claimer

    class ShareClient(NumPyClient):
        def __init__(self, claimer: ShareClaimer) -> None:
            self.claimer = claimer

        def fit(self, parameters: Any, config: dict[str, Any]) -> Any:
            cfg = {k: config.get(k) for k in ROUND_KEYS}
            share = self.claimer(cfg)
            vector = share_vector(share, cfg)
            _LOGGER.info("submitting the share of %s to round %s", share.metric,
                         cfg["round_id"])
            return vector, 1, {}

    def client_fn(context: Any) -> Any:
        return ShareClient(make_claimer(dict(context.node_config))).to_client()

    return ClientApp(client_fn=client_fn, mods=[*outer_mods, secaggplus_mod])
