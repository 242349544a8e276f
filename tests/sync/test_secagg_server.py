"""The aggregator's decisions and the device's round checks, without a deployment (fast)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from edgetwin.cli.main import cli
from edgetwin.config import Config, PrivacyConfig, SecAggConfig
from edgetwin.privacy import accountant
from edgetwin.privacy.consent import grant
from edgetwin.privacy.discrete import plan_for
from edgetwin.privacy.secagg import mint_share, prepare_share, shares
from edgetwin.sync.collector.flower_server import (
    RoundConfig,
    _well_formed,
    decide,
    rounds,
    store_result,
)
from edgetwin.sync.flower_client import RoundRefused, claim_from, share_vector
from tests.sync.flower_rig import round_config
from tests.sync.helpers import DAY, PASSPHRASE, T0, make_twin

CFG = Config(privacy=PrivacyConfig(epsilon_per_release=1.0),
             secagg=SecAggConfig(modes={"hr_mean": "secagg"}, min_cohort=5, levels=64))


def _round(tmp_path: Path, **over: Any) -> RoundConfig:
    rc = round_config(CFG, 8, T0, str(tmp_path / "c.db"), "r")
    rc.update(over)
    return RoundConfig.from_run_config(rc)


def test_publishes_only_with_min_cohort_survivors(tmp_path: Path) -> None:
    cfg = _round(tmp_path)
    p = cfg.plan
    ok = decide(cfg, mean_grid=30.0, devices=6, sampled=8)
    assert ok.state == "published" and ok.total == 180
    assert ok.mean == pytest.approx(p.decode_mean(180, 6))
    assert ok.noise_sd == pytest.approx(p.mean_noise_sd(6))
    few = decide(cfg, mean_grid=30.0, devices=4, sampled=8)
    assert few.state == "withheld" and few.mean is None and few.total is None
    assert "4 survivors < min_cohort 5" in (few.reason or "")
    aborted = decide(cfg, mean_grid=None, devices=0, sampled=8)
    assert aborted.state == "aborted" and aborted.mean is None
    garbage = decide(cfg, mean_grid=2.0**31, devices=6, sampled=8)
    assert garbage.state == "implausible" and garbage.mean is None
    for r in (ok, few, aborted):
        store_result(dataclasses.replace(cfg, round_id=r.state), r, 0.1)
    stored = {r["round_id"]: r for r in rounds(cfg.db)}
    assert stored["withheld"]["mean"] is None and stored["withheld"]["total"] is None
    assert stored["published"]["total"] == 180


def test_round_refuses_to_wrap_the_modulus(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="wrap"):
        _round(tmp_path, expected=10**7)


@pytest.fixture
def task_identity() -> Any:
    """A real Message needs the run id of the process's task (the ServerApp has one)."""
    from flwr.supercore.task_identity import TaskIdentity

    before = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before


def _reply(blobs: list[bytes]) -> Message:
    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.MASKED_PARAMETERS: blobs})})
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def test_malformed_masked_vectors_are_dropped(task_identity: Any) -> None:
    good = [ndarray_to_bytes(np.array([5], dtype=np.int64)),
            ndarray_to_bytes(np.array([2**31], dtype=np.int64))]
    assert _well_formed(_reply(good))
    wrong_shape = [good[0], ndarray_to_bytes(np.array([1, 2], dtype=np.int64))]
    floats = [good[0], ndarray_to_bytes(np.array([0.5]))]
    out_of_ring = [good[0], ndarray_to_bytes(np.array([2**33], dtype=np.int64))]
    for bad in (wrong_shape, floats, out_of_ring, [b"\x00garbage"], [good[0]]):
        assert not _well_formed(_reply(bad))
    other_stage = Message(RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({"x": 1})}), dst_node_id=1,
                          message_type=MessageType.TRAIN)
    assert _well_formed(other_stage)


def test_device_checks_the_round_before_claiming(tmp_path: Path) -> None:
    store = make_twin(tmp_path / "home")
    try:
        grant(store, "hr_mean", "day", T0)
        share = prepare_share(store, CFG, "hr_mean", "day", T0, 72.0, T0 + DAY)
        assert share is not None
        rc = _round(tmp_path).fit_config()
        # a round asking for another plan (here: a smaller cohort) is refused, share kept
        with pytest.raises(RoundRefused, match="min_cohort"):
            claim_from(store, {**rc, "min_cohort": 2})
        assert next(iter(shares(store).values()))["state"] == "ready"
        claimed = claim_from(store, rc)
        assert share_vector(claimed, rc)[0].tolist() == [float(share.value)]
        with pytest.raises(RoundRefused, match="no ready share"):
            claim_from(store, rc)
        assert accountant.ledger(store)["lifetime"]["spent"] == pytest.approx(1.0)
        # a forged or plain value never becomes a vector
        with pytest.raises(TypeError):
            share_vector({"value": 3}, rc)
        plan = plan_for(50.0, 110.0, 64, 1.0, 1e-6, 5)
        other = mint_share("hr_mean", "day", T0 + DAY, 70.0, (50.0, 110.0), plan, charged=1.0)
        with pytest.raises(RoundRefused, match="period_start"):
            share_vector(other, rc)
    finally:
        store.close()


def test_withheld_round_charges_nothing_more_and_next_period_works(tmp_path: Path) -> None:
    store = make_twin(tmp_path / "home")
    try:
        grant(store, "hr_mean", "day", T0)
        prepare_share(store, CFG, "hr_mean", "day", T0, 72.0, T0 + DAY)
        rc = _round(tmp_path).fit_config()
        claim_from(store, rc)  # the share entered a round that is then withheld
        cfg = _round(tmp_path)
        store_result(cfg, decide(cfg, 30.0, 3, 8), 0.0)
        assert accountant.ledger(store)["lifetime"]["spent"] == pytest.approx(1.0)
        # the next period: its own share, charged once, claimable by its own round
        nxt = prepare_share(store, CFG, "hr_mean", "day", T0 + DAY, 70.0, T0 + 2 * DAY)
        assert nxt is not None
        assert accountant.ledger(store)["lifetime"]["spent"] == pytest.approx(2.0)
        rc2 = {**rc, "period_start": T0 + DAY, "round_id": "r2"}
        assert claim_from(store, rc2).period_start == T0 + DAY
    finally:
        store.close()


def test_secagg_join_without_consent_exits_5(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_twin(home).close()
    (home / "config.toml").write_text('[secagg]\nmodes = { hr_mean = "secagg" }\n')
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE)
    pw.chmod(0o600)
    ca = tmp_path / "ca.pem"
    ca.write_text("not used")
    result = CliRunner().invoke(cli, ["--home", str(home), "--passphrase-file", str(pw),
                                      "sync", "secagg-join", "--superlink", "127.0.0.1:1",
                                      "--ca", str(ca), "--node-key", str(tmp_path / "k")])
    assert result.exit_code == 5, result.output
    assert "joins no round" in result.output


def test_collector_aggregate_without_rounds(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    result = CliRunner().invoke(cli, ["--json", "collector", "--db", str(db), "--aggregate"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["secagg_rounds"] == []


def test_aggregator_refuses_a_period_start_that_is_not_one(tmp_path: Path) -> None:
    from tests.sync.helpers import make_tls

    tls = make_tls(tmp_path)
    args = ["aggregator", "--listen", "127.0.0.1:1", "--db", str(tmp_path / "c.db"),
            "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--ca", str(tls.ca),
            "--expected", "3"]
    result = CliRunner().invoke(cli, [*args, "--period-start", "2026-12-01T05:00"])
    assert result.exit_code == 2, result.output
    assert "not the start of a UTC day" in result.output
    result = CliRunner().invoke(cli, [*args, "--period-start", "yesterday"])
    assert result.exit_code == 2 and "is not a date" in result.output
    assert not (tmp_path / "c.db.flower").exists()
