"""Secure-aggregation shares: grid, OpenDP discrete Gaussian shares, sealing, ledger, CLI."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from edgetwin.config import Config, PrivacyConfig, SecAggConfig, parse_config
from edgetwin.errors import BudgetExhausted, ConfigError, ConsentMissing
from edgetwin.privacy import accountant
from edgetwin.privacy.consent import grant
from edgetwin.privacy.discrete import add_share_noise, epsilon_at, plan_for
from edgetwin.privacy.secagg import (
    ForgedShare,
    SecAggShare,
    ShareUnavailable,
    claim_share,
    is_genuine,
    mint_share,
    prepare_due,
    prepare_share,
    readmit,
    require_genuine,
    shares,
)
from edgetwin.sync import outbox
from edgetwin.sync.service import release_due
from tests.sync.helpers import DAY, T0, make_twin, write_days

NOW = T0 + 3 * DAY + 3600
SECAGG = SecAggConfig(modes={"hr_mean": "secagg"}, min_cohort=5, levels=64)
CFG = Config(privacy=PrivacyConfig(epsilon_per_release=1.0, epsilon_per_period=2.0),
             secagg=SECAGG)


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[Any]:
    store = make_twin(tmp_path / "home")
    yield store
    store.close()


def test_grid_clips_rounds_and_decodes() -> None:
    plan = plan_for(50.0, 110.0, 60, 1.0, 1e-6, 10)
    assert plan.step == pytest.approx(1.0)
    assert plan.encode(30.0) == 0 and plan.encode(500.0) == 60
    assert plan.encode(72.4) == 22 and plan.encode(72.6) == 23
    assert plan.decode_mean(22 * 3, 3) == pytest.approx(72.0)
    with pytest.raises(ValueError, match="finite"):
        plan.encode(math.nan)


def test_plan_is_certified_by_opendp() -> None:
    plan = plan_for(50.0, 110.0, 1024, 1.0, 1e-6, 20)
    # the central scale meets (1, 1e-6) by OpenDP's own map, and a slightly smaller one does not
    assert epsilon_at(plan.sigma_central, 1024, 1e-6) <= 1.0
    assert epsilon_at(plan.sigma_central * 0.99, 1024, 1e-6) > 1.0
    assert plan.sigma_share == pytest.approx(plan.sigma_central / math.sqrt(20))
    # one share alone is weaker: what a device risks if every other participant colludes
    assert plan.epsilon_own == pytest.approx(epsilon_at(plan.sigma_share, 1024, 1e-6))
    assert plan.epsilon_own > 4 * plan.epsilon
    assert plan.tau < 1e-9
    assert plan.clip_range >= 1024 + 30 * plan.sigma_share
    assert plan.max_devices * 2 * plan.clip_range < 2**32


def test_sum_of_shares_has_the_declared_distribution() -> None:
    """Goodness of fit: sum of n OpenDP shares minus the true grid sum ~ N(0, n sigma_share^2)."""
    plan = plan_for(50.0, 110.0, 64, 1.0, 1e-6, 5)
    rng = np.random.default_rng(7)
    n, rounds = 6, 1500
    residuals = []
    for _ in range(rounds):
        grid = [plan.encode(float(v)) for v in rng.uniform(40, 120, n)]
        noisy = [add_share_noise(plan, g) for g in grid]
        residuals.append(sum(noisy) - sum(grid))
    z = np.asarray(residuals) / (plan.sigma_share * math.sqrt(n))
    # sigma_share is ~130 grid units: the discrete Gaussian is normal to far below KS resolution
    assert stats.kstest(z, "norm").pvalue > 0.001
    assert stats.chi2.sf(np.sum(z**2), rounds) > 0.001
    assert stats.chi2.cdf(np.sum(z**2), rounds) > 0.001


def test_only_a_minted_share_is_genuine() -> None:
    plan = plan_for(50.0, 110.0, 64, 1.0, 1e-6, 5)
    share = mint_share("hr_mean", "day", T0, 72.0, (50.0, 110.0), plan, charged=1.0, now=T0)
    assert is_genuine(share) and require_genuine(share) is share
    with pytest.raises(ForgedShare):
        dataclasses.replace(share, value=share.value + 1)
    with pytest.raises(ForgedShare):
        SecAggShare(**share.to_record(), _capability=object(), _seal=b"")
    assert not is_genuine(object.__new__(SecAggShare))
    with pytest.raises(ForgedShare, match="only a SecAggShare"):
        require_genuine({"value": 3})
    assert readmit(share.to_record()).value == share.value
    bad = {**share.to_record(), "sigma_share": share.sigma_share / 2}
    with pytest.raises(ValueError, match="sigma"):
        readmit(bad)
    with pytest.raises(ValueError, match="whole number"):
        readmit({**share.to_record(), "value": 3.5})


def test_config_modes_are_validated() -> None:
    cfg = parse_config('[secagg]\nmodes = { hr_mean = "secagg" }\nmin_cohort = 30\n')
    assert cfg.secagg.mode("hr_mean") == "secagg" and cfg.secagg.mode("spo2_mean") == "local"
    with pytest.raises(ConfigError, match="hr_maen"):
        parse_config('[secagg]\nmodes = { hr_maen = "secagg" }\n')
    with pytest.raises(ConfigError, match="'local' or 'secagg'"):
        parse_config('[secagg]\nmodes = { hr_mean = "central" }\n')


def test_prepare_charges_once_and_local_path_skips_secagg_metrics(twin: Any) -> None:
    write_days(twin, T0, 3)
    grant(twin, "hr_mean", "day", T0)
    grant(twin, "spo2_mean", "day", T0)
    report = prepare_due(twin, CFG, NOW)
    assert [s.period_start for s in report.prepared] == [T0, T0 + DAY, T0 + 2 * DAY]
    assert all(s.charged == 1.0 and s.epsilon == 1.0 for s in report.prepared)
    ledger = accountant.ledger(twin)
    assert ledger["lifetime"]["spent"] == pytest.approx(3.0)
    # the local path leaves hr_mean alone: nothing of it in the outbox
    local = release_due(twin, CFG, NOW)
    assert {r.metric for r in local.released} <= {"spo2_mean"}
    assert all(e.metric != "hr_mean" for e in outbox.entries(twin))
    spent = accountant.ledger(twin)["lifetime"]["spent"]
    assert spent == pytest.approx(3.0 + len(local.released))
    # a second pass charges nothing and mints nothing
    assert prepare_due(twin, CFG, NOW).prepared == []
    assert accountant.ledger(twin)["lifetime"]["spent"] == pytest.approx(spent)
    events = [e for e in twin.audit_entries() if e["event"] == "secagg.share"]
    assert len(events) == 3
    assert events[0]["details"]["epsilon_own"] > events[0]["details"]["epsilon"] == 1.0
    # the share value itself is never in the audit log
    assert all("value" not in e["details"] for e in events)


def test_claim_once_then_the_round_cannot_reuse_it(twin: Any) -> None:
    write_days(twin, T0, 1)
    grant(twin, "hr_mean", "day", T0)
    prepare_due(twin, CFG, T0 + DAY + 3600)
    share = claim_share(twin, "hr_mean", T0, "round-1", NOW)
    assert is_genuine(share)
    with pytest.raises(ShareUnavailable, match="already submitted"):
        claim_share(twin, "hr_mean", T0, "round-2", NOW)
    with pytest.raises(ShareUnavailable, match="no share"):
        claim_share(twin, "hr_mean", T0 + DAY, "round-2", NOW)
    assert shares(twin)[f"hr_mean/day/{int(T0)}"]["state"] == "submitted"


def test_no_consent_no_share_and_no_claim(twin: Any) -> None:
    write_days(twin, T0, 2)
    assert prepare_due(twin, CFG, NOW).prepared == []
    assert prepare_share(twin, CFG, "hr_mean", "day", T0, 70.0, NOW) is None
    with pytest.raises(ConsentMissing):
        claim_share(twin, "hr_mean", T0, "r", NOW)
    assert accountant.ledger(twin) == {}


def test_over_budget_is_refused_and_nothing_is_minted(twin: Any) -> None:
    write_days(twin, T0, 1)
    grant(twin, "hr_mean", "day", T0)
    tight = dataclasses.replace(CFG, privacy=PrivacyConfig(
        epsilon_per_release=1.0, epsilon_per_period=1.0, epsilon_lifetime=1.5))
    prepare_share(twin, tight, "hr_mean", "day", T0, 70.0, NOW)
    with pytest.raises(BudgetExhausted):
        prepare_share(twin, tight, "hr_mean", "day", T0 + DAY, 70.0, NOW)
    assert len(shares(twin)) == 1
    assert accountant.ledger(twin)["lifetime"]["spent"] == pytest.approx(1.0)


def test_own_share_charge_is_the_larger_epsilon(twin: Any) -> None:
    grant(twin, "hr_mean", "day", T0)
    own = dataclasses.replace(CFG, privacy=PrivacyConfig(
        epsilon_per_release=1.0, epsilon_per_period=50.0, epsilon_lifetime=100.0),
        secagg=dataclasses.replace(SECAGG, charge="own_share"))
    share = prepare_share(twin, own, "hr_mean", "day", T0, 70.0, NOW)
    assert share is not None and share.charged == share.epsilon_own > 1.0
    assert accountant.ledger(twin)["lifetime"]["spent"] == pytest.approx(share.epsilon_own)


def test_cli_sync_run_over_budget_exits_5(tmp_path: Path) -> None:
    from edgetwin.cli.main import cli
    from tests.sync.helpers import PASSPHRASE

    home = tmp_path / "home"
    store = make_twin(home)
    try:
        write_days(store, T0, 3)
        grant(store, "hr_mean", "day", T0)
    finally:
        store.close()
    (home / "config.toml").write_text(
        "[privacy]\nepsilon_per_release = 1.0\nepsilon_per_period = 1.0\n"
        "epsilon_lifetime = 2.0\nbackfill_days = 30\n"
        "[secagg]\nmodes = { hr_mean = \"secagg\" }\nmin_cohort = 5\nlevels = 64\n")
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE)
    pw.chmod(0o600)
    result = CliRunner().invoke(cli, ["--home", str(home), "--passphrase-file", str(pw),
                                      "--json", "sync", "run", "--no-upload"])
    assert result.exit_code == 5, result.output
    assert "secure-aggregation share(s) refused" in result.output


def test_the_daemons_sync_job_prepares_due_shares_once(twin: Any) -> None:
    # the daemon's periodic sync job, not only 'edgetwin sync run', prepares the shares of
    # metrics in secure-aggregation mode; a second run charges nothing more
    from edgetwin.daemon.app import _sync_job

    write_days(twin, T0, 2)
    grant(twin, "hr_mean", "day", T0)
    job = _sync_job(twin, CFG)
    job()
    ready = [k for k, v in shares(twin).items() if v["state"] == "ready"]
    assert len(ready) == 2  # both days with data; every later day has too little
    spent = accountant.ledger(twin)["lifetime"]["spent"]
    assert spent == pytest.approx(len(ready))
    job()
    assert accountant.ledger(twin)["lifetime"]["spent"] == pytest.approx(spent)
    assert all(e.metric != "hr_mean" for e in outbox.entries(twin))  # never a local release
