"""OpenDP in a child process: the same releases, and the daemon never maps OpenDP."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetwin.privacy import discrete, noise_process
from edgetwin.privacy.mechanism import mechanism_for, release_value
from edgetwin.privacy.metrics import METRICS
from edgetwin.privacy.noise_process import NoiseProcessError, opendp_out_of_process
from edgetwin.privacy.release import DPRelease

REPO = Path(__file__).resolve().parents[2]
HR = METRICS["hr_mean"]


def test_a_release_through_the_child_is_the_in_process_release_with_fresh_noise() -> None:
    lower, upper = HR.default_bounds
    with opendp_out_of_process() as child:
        release = release_value(HR, "day", 1_750_032_000.0, 72.0, (lower, upper), 0.5)
        assert child.requests == 1
    assert isinstance(release, DPRelease)
    mech = mechanism_for(lower, upper, 0.5)
    assert release.scale == mech.scale and release.sensitivity == mech.sensitivity
    assert (release.lower, release.upper, release.epsilon) == (lower, upper, 0.5)
    assert math.isfinite(release.value) and release.value != 72.0
    assert noise_process.current() is None  # the block is over, the child is gone


def test_the_child_draws_laplace_noise_of_the_declared_scale() -> None:
    lower, upper = 50.0, 110.0
    with opendp_out_of_process() as child:
        draws = np.array([child.laplace(lower, upper, 2.0, 80.0).value for _ in range(400)])
    scale = mechanism_for(lower, upper, 2.0).scale  # 30 bpm
    noise = draws - 80.0
    # Laplace(b): mean 0, mean |x| = b; 400 draws put both well inside these bounds
    assert abs(noise.mean()) < 5 * math.sqrt(2) * scale / math.sqrt(400)
    assert np.mean(np.abs(noise)) == pytest.approx(scale, rel=0.2)
    assert len(set(draws.tolist())) == 400


def test_a_summary_outside_the_bounds_is_refused_as_in_process() -> None:
    with opendp_out_of_process() as child, pytest.raises(ValueError, match="clip it first"):
        child.laplace(50.0, 110.0, 0.5, 140.0)


def test_a_child_that_died_is_replaced_and_nonsense_is_refused() -> None:
    with opendp_out_of_process() as child:
        child.start()
        assert child._proc is not None
        child._proc.kill()
        child._proc.wait()
        assert math.isfinite(child.laplace(50.0, 110.0, 0.5, 80.0).value)  # a fresh child
    for line in ("", "not json\n", "[1, 2]\n"):
        with pytest.raises(NoiseProcessError, match="OpenDP process"):
            noise_process._parse_answer(line)
    with pytest.raises(ValueError, match="bounds"):  # the child's refusal, as in-process
        noise_process._parse_answer(json.dumps({"error": "bounds reversed"}) + "\n")
    for answer in ({"value": "x"}, {"value": float("nan"), "scale": 1, "sensitivity": 1},
                   {"value": 1.0, "scale": -1, "sensitivity": 1}):
        with pytest.raises(NoiseProcessError, match="OpenDP process"):
            noise_process._noised(answer)


def test_a_share_made_through_the_child_is_the_in_process_plan_with_fresh_noise() -> None:
    params = (50.0, 110.0, 64, 1.0, 1e-6, 20)
    here = discrete.plan_for(*params)
    with opendp_out_of_process() as child:
        there = discrete.plan_for(*params)
        assert child.requests == 1 and discrete.plan_for(*params) is there  # asked once
        draws = np.array([discrete.add_share_noise(there, 32) for _ in range(400)])
        assert child.requests == 401
        with pytest.raises(ValueError, match=r"outside 0\.\.64"):
            discrete.add_share_noise(there, 65)  # refused here, before the child is asked
        with pytest.raises(ValueError, match="levels"):
            child.share_plan(lower=50.0, upper=110.0, levels=1, epsilon=1.0, delta=1e-6,
                             min_cohort=20)  # the child's refusal comes back as in-process
    assert there == here
    # the child's draws are the declared discrete Gaussian: integers, mean 32, sd sigma_share
    assert draws.dtype.kind == "i"
    sd = here.sigma_share
    assert abs(draws.mean() - 32) < 4 * sd / np.sqrt(draws.size)
    assert 0.85 * sd < draws.std() < 1.15 * sd


def test_the_daemons_sync_job_releases_without_ever_mapping_opendp(tmp_path: Path) -> None:
    # OpenDP is ~17 MiB resident once loaded; the daemon's sync job keeps it in a child
    code = f"""
import sys
from edgetwin.config import Config
from edgetwin.daemon.app import _sync_job
from edgetwin.privacy.consent import grant
from edgetwin.sync import outbox
from tests.sync.helpers import T0, make_twin, write_days

store = make_twin({str(tmp_path / "home")!r})
write_days(store, T0, 2)
grant(store, "hr_mean", "day", T0)
_sync_job(store, Config())()
pending = [e for e in outbox.entries(store) if e.state == "pending"]
print(len(pending), "opendp" in sys.modules)
store.close()
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    released, mapped = done.stdout.split()
    assert int(released) >= 2  # both days of data released, noised in the child
    assert mapped == "False"


def test_the_daemons_sync_job_makes_secagg_shares_without_mapping_opendp(tmp_path: Path) -> None:
    code = f"""
import sys
from edgetwin.config import Config, SecAggConfig
from edgetwin.daemon.app import _sync_job
from edgetwin.privacy import accountant
from edgetwin.privacy.consent import grant
from edgetwin.privacy.discrete import plan_for
from edgetwin.privacy.secagg import readmit, shares
from tests.sync.helpers import T0, make_twin, write_days

store = make_twin({str(tmp_path / "home")!r})
write_days(store, T0, 2)
grant(store, "hr_mean", "day", T0)
config = Config(secagg=SecAggConfig(modes={{"hr_mean": "secagg"}}, min_cohort=20))
_sync_job(store, config)()
mapped = "opendp" in sys.modules
ready = [e for e in shares(store).values() if e["state"] == "ready"]
spent = accountant.ledger(store)["lifetime"]["spent"]
for e in ready:
    readmit(e["share"])  # each one consistent with the in-process plan (OpenDP loaded now)
print(len(ready), round(spent / config.privacy.epsilon_per_release, 6), mapped)
store.close()
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ready, charges, mapped = done.stdout.split()
    assert int(ready) >= 2  # a share for each day of data, noised in the child
    assert float(charges) == pytest.approx(int(ready))  # each charged once
    assert mapped == "False"
