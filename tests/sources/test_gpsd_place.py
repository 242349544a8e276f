"""The coarse grid, the place learner, the [location] config and 'pair add gpsd'."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edgetwin.config import parse_config
from edgetwin.errors import ConfigError
from edgetwin.sources.place import (
    ELSEWHERE,
    HOME,
    MAX_GAP_S,
    REGULAR,
    Grid,
    PlaceLearner,
    haversine_km,
)
from tests.sources import gps_track
from tests.sources.gpsd_harness import GpsFake, free_port, needs_gpsd

HOME_P = (51.52160, -0.08700)
WORK_P = (51.50740, -0.12780)  # ~3.2 km away
SHOP_P = (51.46130, -0.11500)


@pytest.mark.parametrize("precision", [100.0, 500.0, 1000.0, 2000.0])
@pytest.mark.parametrize("where", [HOME_P, (45.76012, 4.84193), (-33.8688, 151.2093),
                                   (64.1466, -21.9426)])
def test_gpsd_grid_snaps_to_cell_centres_of_about_the_precision(
    precision: float, where: tuple[float, float]
) -> None:
    grid = Grid(precision)
    centre = grid.snap(*where)
    assert grid.snap(*centre) == centre  # a centre is its own cell
    assert centre != where
    # the fix lies within half a cell of its centre on each axis (in metres)
    assert abs(centre[0] - where[0]) * 111_320 <= precision / 2 + 1e-6
    east_m = abs(centre[1] - where[1]) * 111_320 * math.cos(math.radians(centre[0]))
    assert east_m <= precision / 2 * 1.01
    # neighbouring cells are about ``precision`` apart both ways
    i, j = grid.cell(*where)
    north = grid.snap(centre[0] + grid.dlat, centre[1])
    assert (north[0] - centre[0]) * 111_320 == pytest.approx(precision, rel=1e-6)
    assert haversine_km(grid.cell_centre(i, j), grid.cell_centre(i, j + 1)) * 1000 == \
        pytest.approx(precision, rel=0.02)


def test_gpsd_grid_refuses_a_silly_precision() -> None:
    for bad in (0.0, -5.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="positive number of metres"):
            Grid(bad)


def _week(learner: PlaceLearner, grid: Grid, days: int = 5) -> list[tuple[str, float, float]]:
    """Nights at home, work 09-17 on weekdays, Saturday at a shop; fix every 5 min."""
    out = []
    t = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday
    while t < datetime(2026, 3, 2, tzinfo=UTC) + timedelta(days=days):
        if t.weekday() < 5 and 9 <= t.hour < 17:
            where, pos = "work", WORK_P
        elif t.weekday() == 5 and 10 <= t.hour < 12:
            where, pos = "shop", SHOP_P
        else:
            where, pos = "home", HOME_P
        code, dist = learner.observe(t.timestamp(), *grid.snap(*pos))
        out.append((where, code, dist))
        t += timedelta(minutes=5)
    return out


def test_gpsd_learner_forms_home_regular_and_elsewhere() -> None:
    grid = Grid(1000.0)
    learner = PlaceLearner(grid, regular_days=3, tz=UTC)
    seen = _week(learner, grid, days=6)
    assert math.isnan(seen[0][1]) and math.isnan(seen[0][2])  # nothing known at first
    codes = {(w, c) for w, c, _ in seen if not math.isnan(c)}
    assert ("home", HOME) in codes and ("work", REGULAR) in codes and ("shop", ELSEWHERE) in codes
    assert ("work", ELSEWHERE) in codes  # before its third day
    assert ("home", REGULAR) not in codes and ("shop", REGULAR) not in codes
    work = [d for w, c, d in seen if w == "work" and not math.isnan(d)]
    assert all(2.5 < d < 4.5 for d in work)
    assert learner.home == grid.locate(*HOME_P)


def test_gpsd_learner_state_round_trips_and_holds_only_cells() -> None:
    grid = Grid(1000.0)
    learner = PlaceLearner(grid, tz=UTC)
    _week(learner, grid)
    state = json.loads(json.dumps(learner.state()))
    text = json.dumps(state)
    for exact in (HOME_P, WORK_P):
        assert f"{exact[0]:.4f}" not in text and f"{exact[1]:.4f}" not in text
    again = PlaceLearner(grid, tz=UTC, state=state)
    assert again.home == learner.home and again.regular == learner.regular
    key = grid.locate(*WORK_P)
    assert again.classify(key, *grid.snap(*WORK_P)) == learner.classify(key, *grid.snap(*WORK_P))
    with pytest.raises(ValueError, match="version"):
        PlaceLearner(grid, state={**state, "version": 99})


def test_gpsd_learner_is_cut_to_the_stored_history() -> None:
    grid = Grid(1000.0)
    learner = PlaceLearner(grid, tz=UTC)
    _week(learner, grid)
    assert learner.home is not None
    # the stored stream now starts on Friday (forget --before, retention): earlier days go
    friday = datetime(2026, 3, 6, tzinfo=UTC).timestamp()
    assert learner.trim_before(friday)
    days = {int(d) for cell in learner.state()["cells"].values() for d in cell["d"]}
    assert days and min(days) >= datetime(2026, 3, 6).toordinal()
    assert learner.regular == frozenset()  # the workplace's three days are gone
    assert learner.trim_before(None)  # the stream is gone: everything
    assert learner.state()["cells"] == {} and learner.home is None


def test_gpsd_learner_counts_no_time_across_gaps_or_backwards() -> None:
    grid = Grid(1000.0)
    learner = PlaceLearner(grid, tz=UTC)
    t0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC).timestamp()
    learner.observe(t0, *grid.snap(*HOME_P))
    learner.observe(t0 + MAX_GAP_S + 1, *grid.snap(*HOME_P))  # a gap: unknown time
    learner.observe(t0 + 10, *grid.snap(*HOME_P))  # backwards: learns nothing
    assert learner.state()["cells"] == {}
    learner.observe(t0 + MAX_GAP_S + 61, *grid.snap(*HOME_P))
    (cell,) = learner.state()["cells"].values()
    assert sum(cell["d"].values()) == 60.0 and sum(cell["n"].values()) == 60.0


def test_gpsd_location_config_is_validated_with_precise_errors() -> None:
    cfg = parse_config("[location]\nprecision_m = 500\nexact = true\nregular_days = 4\n")
    assert (cfg.location.precision_m, cfg.location.exact, cfg.location.regular_days) == \
        (500.0, True, 4)
    assert parse_config("").location.precision_m == 1000.0
    assert parse_config("").location.exact is False
    with pytest.raises(ConfigError, match=r"location.precision_m is 5; use 10 to 100000"):
        parse_config("[location]\nprecision_m = 5\n")
    with pytest.raises(ConfigError, match=r"location.regular_days is 0"):
        parse_config("[location]\nregular_days = 0\n")
    with pytest.raises(ConfigError, match=r"location.exact is 'yes'; expected true or false"):
        parse_config('[location]\nexact = "yes"\n')
    with pytest.raises(ConfigError) as err:
        parse_config("[location]\nprecison_m = 100\n")
    assert "did you mean 'location.precision_m'?" in str(err.value)


@needs_gpsd
def test_gpsd_pair_add_probes_gpsd_and_stores_the_record(
    run_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")
    assert run_cli("init").exit_code == 0
    port = free_port()
    fake = GpsFake(gps_track.DATA, port)
    try:
        result = run_cli("--json", "pair", "add", "gpsd", "--port", str(port))
    finally:
        fake.stop()
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["name"] == "gpsd" and doc["stream"] == "gpsd.location"
    assert doc["channels"] == ["lat", "lon", "place", "homedist"]
    assert doc["gpsd"]["release"] == "3.22" or doc["gpsd"]["release"].startswith("3.")
    listed = json.loads(run_cli("--json", "pair", "list").output)
    assert listed == [{"name": "gpsd", "kind": "gpsd", "host": "127.0.0.1", "port": port}]


def test_gpsd_pair_add_errors(run_cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")
    assert run_cli("init").exit_code == 0
    nobody = run_cli("pair", "add", "gpsd", "--port", str(free_port()), "--timeout", "1")
    assert nobody.exit_code == 6
    assert "does not answer" in nobody.output and "start gpsd" in nobody.output
    bad = run_cli("pair", "add", "gpsd", "--port", "70000")
    assert bad.exit_code == 2 and "--port 70000 is not in 1..65535" in bad.output
    assert json.loads(run_cli("--json", "pair", "list").output) == []
