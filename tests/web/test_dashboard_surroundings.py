"""The dashboard's timeline and the surroundings: a group filter on the page, the API charting
only the room features when asked, and frames stored at schema v1 drawn beside v2 ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetwin.features.pipeline import FeaturePipeline
from edgetwin.features.schema import ENVIRONMENT, INDEX, LAYOUTS
from edgetwin.store import Secret, TwinStore
from edgetwin.types import FeatureFrame, SampleBatch
from edgetwin.web import data, pages

T0 = 1_767_225_600.0


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


def test_the_timeline_page_offers_body_and_surroundings() -> None:
    html = pages.timeline_body()
    assert 'id="groups"' in html
    assert f'data-features="{",".join(ENVIRONMENT)}"' in html
    assert f'data-features="{",".join(LAYOUTS[1])}"' in html
    assert 'data-features="" class=active' in html


def test_the_api_charts_the_room_and_old_frames_together(tmp_path: Path) -> None:
    old = []
    for k in range(60):  # five minutes of v1 frames: heart rate only
        v = np.full(13, np.nan)
        v[INDEX["hr"]] = 60.0 + k % 3
        old.append(FeatureFrame(T0 + 5 * k, v, np.where(np.isfinite(v), 1.0, 0.0),
                                np.zeros(13, bool), 1))
    t = T0 + 300 + 10.0 * np.arange(30)
    room = SampleBatch.build("bedroom.climate", ("temp", "co2"), t,
                             np.column_stack([np.full(30, 20.5), 700 + 5 * np.arange(30)]))
    pipe = FeaturePipeline()
    new = pipe.push(room) + pipe.flush()
    with TwinStore.create(tmp_path / "twin", Secret.passphrase("web")) as store:
        store.append_frames(old)
        store.append_frames(new)
        store.commit()
        everything = data.timeline(store, T0, T0 + 700)
        surroundings = data.timeline(store, T0, T0 + 700, features=list(ENVIRONMENT))
    assert everything["frames"] == len(old) + len(new)  # the v1 frames are not dropped
    assert set(everything["features"]) == {"hr", "ambient_temp", "co2"}
    assert surroundings["features"] == ["ambient_temp", "co2"]
    co2 = [x for x in surroundings["points"]["columns"]["co2"] if x is not None]
    assert co2 and min(co2) >= 700 and max(co2) <= 845
    with TwinStore.open(tmp_path / "twin", Secret.passphrase("web")) as store, \
            pytest.raises(ValueError, match="unknown feature"):
        data.timeline(store, T0, T0 + 700, features=["lat"])  # a coordinate is no feature


def test_the_report_keeps_where_the_person_was_out_of_its_day_tables() -> None:
    from edgetwin.features.schema import NAMES
    from edgetwin.store.codec import FrameColumns
    from edgetwin.web.report import Columns, day_stats

    n = 120
    values = np.full((n, len(NAMES)), np.nan)
    values[:, INDEX["hr"]] = 61.0
    values[:, INDEX["co2"]] = 900.0
    values[:, INDEX["place"]] = 2.0
    values[:, INDEX["home_distance"]] = 7.5
    block = FrameColumns(T0 + 5.0 * np.arange(n), values, np.ones_like(values),
                         np.zeros(values.shape, bool), 2)
    days = day_stats(Columns.from_blocks([block], n), T0, T0 + 5.0 * n, 5.0)
    feats = days[0]["features"]
    assert feats["hr"]["mean"] == 61.0 and feats["co2"]["mean"] == 900.0
    assert "place" not in feats and "home_distance" not in feats
