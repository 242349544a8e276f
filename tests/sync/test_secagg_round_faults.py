"""A round whose server is lost mid-round, and devices that join after the round sampled.

Flower's real ``SecAggPlusWorkflow`` (edgetwin's ServerApp round, ``run_round``) against its
real ``secaggplus_mod`` in each device's ClientApp, the devices holding real encrypted twins
that claim their shares as on a SuperNode; only the transport is in-process
(edgetwin.sync.flower_local.LocalGrid). A SuperLink restart ends the ServerApp's round where
it stands (the SuperLink keeps its state in memory): here the Grid raises at that stage.
What must hold (issue 16): the round completes or aborts cleanly, nothing is charged twice,
nothing is released unnoised, and the next period works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgetwin.config import Config, PrivacyConfig, SecAggConfig
from edgetwin.privacy import accountant
from edgetwin.privacy.consent import grant
from edgetwin.privacy.secagg import prepare_share, share_key, shares
from edgetwin.sync.collector.flower_server import RoundConfig, RoundResult, rounds, run_round
from edgetwin.sync.flower_client import make_client_app
from edgetwin.sync.flower_local import LocalGrid, node_context, server_context
from tests.sync.flower_rig import round_config
from tests.sync.helpers import DAY, PASSPHRASE, T0, make_twin, open_twin

pytestmark = pytest.mark.timeout(300)

CFG = Config(privacy=PrivacyConfig(epsilon_per_release=1.0),
             secagg=SecAggConfig(modes={"hr_mean": "secagg"}, min_cohort=4, levels=64))


class SuperLinkLost(ConnectionError):
    """What the ServerApp's Grid raises once its SuperLink is gone."""


class Fleet:
    """Devices with real twins, each holding a ready share per prepared period."""

    def __init__(self, work: Path, n: int) -> None:
        self.work = work
        self.pw = work / "pass"
        self.pw.write_text(PASSPHRASE)
        self.pw.chmod(0o600)
        self.homes = {node: work / f"dev{node}" for node in range(1, n + 1)}
        for home in self.homes.values():
            store = make_twin(home)
            try:
                grant(store, "hr_mean", "day", T0)
            finally:
                store.close()
        self.values: dict[tuple[int, float], int] = {}  # (node, period) -> share value

    def prepare(self, period_start: float) -> None:
        for node, home in self.homes.items():
            store = open_twin(home)
            try:
                share = prepare_share(store, CFG, "hr_mean", "day", period_start,
                                      60.0 + 3.7 * node, period_start + DAY)
            finally:
                store.close()
            assert share is not None
            self.values[node, period_start] = share.value

    def grid(self, nodes: list[int] | None = None, **hooks: Any) -> LocalGrid:
        app = make_client_app()  # the SuperNode's ClientApp: opens the twin, claims the share
        contexts = {node: node_context(node, {"edgetwin-home": str(home),
                                              "passphrase-file": str(self.pw)})
                    for node, home in self.homes.items()}
        return LocalGrid(app, contexts, nodes=nodes, **hooks)

    def round(self, grid: LocalGrid, period_start: float, round_id: str, expected: int
              ) -> RoundResult:
        rc = round_config(CFG, expected, period_start, str(self.work / "collector.db"),
                          round_id, timeout=60)
        return run_round(grid, server_context(rc), RoundConfig.from_run_config(rc))

    def state(self, node: int, period_start: float) -> tuple[str, float]:
        """(the period's share state, lifetime ε spent) of one device."""
        store = open_twin(self.homes[node])
        try:
            entry = shares(store)[share_key("hr_mean", "day", period_start)]
            return entry["state"], accountant.ledger(store)["lifetime"]["spent"]
        finally:
            store.close()

    def publishes_exact_sum(self, period_start: float, round_id: str, *, spent: float,
                            nodes: list[int] | None = None) -> None:
        """A round of ``nodes`` (default: all) publishes exactly their shares' sum, and each
        share is then spent, with ``spent`` ε charged to its device in all."""
        nodes = list(self.homes) if nodes is None else nodes
        result = self.round(self.grid(nodes=nodes), period_start, round_id, len(nodes))
        assert result.state == "published" and result.devices == len(nodes)
        assert result.total == sum(self.values[node, period_start] for node in nodes)
        for node in nodes:
            assert self.state(node, period_start) == ("submitted", pytest.approx(spent))

    def stored(self, round_id: str) -> dict[str, Any]:
        (row,) = [r for r in rounds(str(self.work / "collector.db")) if r["round_id"] == round_id]
        return row


def lose_superlink_at(stage: str) -> Any:
    def hook(at: str, _messages: list[Any]) -> None:
        if at == stage:
            raise SuperLinkLost(f"SuperLink gone before {stage}")
    return hook


def test_server_lost_after_the_masked_vectors_releases_nothing_and_charges_once(
        tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, 6)
    fleet.prepare(T0)
    lost = fleet.round(fleet.grid(before_stage=lose_superlink_at("unmask")), T0, "r1", 6)
    # the masked vectors left, the sum was never unmasked: an aborted round, no figure
    assert lost.state == "aborted" and lost.mean is None and lost.total is None
    row = fleet.stored("r1")
    assert row["state"] == "aborted" and row["mean"] is None and row["total"] is None
    assert row["noise_sd"] is None
    for node in fleet.homes:
        # each share left once and stays spent; charged once, when it was minted
        assert fleet.state(node, T0) == ("submitted", pytest.approx(1.0))
    # the restarted server runs the period again: no device has a share left for it
    again = fleet.round(fleet.grid(), T0, "r1-again", 6)
    assert again.state in ("aborted", "withheld") and again.mean is None
    assert fleet.stored("r1-again")["mean"] is None
    for node in fleet.homes:
        assert fleet.state(node, T0) == ("submitted", pytest.approx(1.0))
    # the next period has its own shares and its own round, and publishes
    fleet.prepare(T0 + DAY)
    fleet.publishes_exact_sum(T0 + DAY, "r2", spent=2.0)


def test_server_lost_before_any_share_left_keeps_the_shares_for_a_rerun(
        tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, 6)
    fleet.prepare(T0)
    lost = fleet.round(fleet.grid(before_stage=lose_superlink_at("collect_masked_vectors")),
                       T0, "r1", 6)
    assert lost.state == "aborted" and lost.mean is None
    for node in fleet.homes:
        # keys were exchanged but no share was claimed: still ready, not re-drawn
        assert fleet.state(node, T0) == ("ready", pytest.approx(1.0))
    fleet.publishes_exact_sum(T0, "r1-rerun", spent=1.0)


def test_too_few_survivors_publish_nothing_charge_nothing_more_and_the_next_period_works(
        tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, 6)
    fleet.prepare(T0)
    vanished: set[int] = set()

    def three_vanish(stage: str, messages: list[Any]) -> None:
        if stage == "collect_masked_vectors":  # after the key exchange, before any share left
            vanished.update(m.metadata.dst_node_id for m in messages[:3])
        messages[:] = [m for m in messages if m.metadata.dst_node_id not in vanished]

    few = fleet.round(fleet.grid(before_stage=three_vanish), T0, "r1", 6)
    # SecAgg+ unmasks the 3 survivors' sum (threshold 3 of 6), but 3 < min_cohort 4
    assert few.state == "withheld" and few.devices == 3 and few.sampled == 6
    assert few.mean is None and few.total is None
    row = fleet.stored("r1")
    assert row["mean"] is None and row["total"] is None and "min_cohort" in row["reason"]
    for node in fleet.homes:
        state = "ready" if node in vanished else "submitted"
        assert fleet.state(node, T0) == (state, pytest.approx(1.0))  # charged once, at minting
    fleet.prepare(T0 + DAY)
    fleet.publishes_exact_sum(T0 + DAY, "r2", spent=2.0)


def test_late_joiners_keep_their_share_for_a_later_round_of_the_period(
        tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, 10)
    fleet.prepare(T0)
    early, late = [1, 2, 3, 4, 5, 6], [7, 8, 9, 10]
    grid: LocalGrid

    def join_late(stage: str, _messages: list[Any]) -> None:
        if stage == "share_keys":  # the round has sampled its devices; four more connect
            grid.nodes = early + late

    grid = fleet.grid(nodes=early, before_stage=join_late)
    first = fleet.round(grid, T0, "r1", 6)
    assert first.state == "published" and first.sampled == 6 and first.devices == 6
    assert first.total == sum(fleet.values[node, T0] for node in early)
    assert grid.nodes == early + late  # they did connect during the round
    for node in late:
        assert fleet.state(node, T0) == ("ready", pytest.approx(1.0))
    # a later round of the same period takes the late joiners, and only their shares
    fleet.publishes_exact_sum(T0, "r1-late", spent=1.0, nodes=late)
    for node in fleet.homes:
        assert fleet.state(node, T0) == ("submitted", pytest.approx(1.0))
