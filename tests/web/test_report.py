"""edgetwin report: a twin with known frames through the real CLI, the HTML parsed back.

The file must be self-contained (no src/href/url() leaving it), its inlined chart data must
hold the stored values at their times with the masked and imputed spans, its per-day table
the statistics computed here independently; bad ranges and outputs get precise errors and
leave no file behind; --png writes one decodable PNG per chart.
"""

from __future__ import annotations

import json
import re
import stat
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

T0 = 1_750_032_000.0  # a UTC midnight (2025-06-16)
DAY = 86_400.0
STEP = 60.0
N = 2 * 1440  # two days of one frame a minute
HOLE = (1440 + 900, 1440 + 960)  # day 2, 15:00-16:00: no frames at all
MASKED = (600, 630)  # day 1, 10:00-10:30: hr present but of low quality
IMPUTED = (720, 730)  # day 1, 12:00-12:10: hr filled in by the imputer
MARKER_T = T0 + 8 * 3600
MARKER_TEXT = "took 5 mg <b>drug</b> {{DATA}}"


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


def known() -> dict[str, np.ndarray]:
    """The frames' times and values (before the hole is cut), one array per feature."""
    k = np.arange(N)
    return {
        "k": k,
        "t": T0 + STEP * k,
        "hr": 65.0 + 10.0 * np.sin(2 * np.pi * k / 720.0) + (k % 7) * 0.1,
        "spo2": 97.0 + (k % 5) * 0.2,
        "eeg_alpha": 0.2 + 0.001 * (k % 50),
    }


def build_twin(home: Path, passphrase: str) -> None:
    """A twin with the known frames, a marker, forecasts and one consent."""
    from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION
    from edgetwin.privacy.consent import grant
    from edgetwin.store import KdfParams, Secret, TwinStore
    from edgetwin.types import FeatureFrame, Marker, Prediction, SampleBatch

    kn = known()
    store = TwinStore.create(home, Secret.passphrase(passphrase), kdf=KdfParams.for_tests())
    try:
        keep = (kn["k"] < HOLE[0]) | (kn["k"] >= HOLE[1])
        store.append_samples(SampleBatch.build("wrist", ["hr"], kn["t"][keep],
                                               kn["hr"][keep][:, None]))
        frames = []
        for i in np.flatnonzero(keep):
            values = np.full(len(NAMES), np.nan)
            quality = np.ones(len(NAMES))
            imputed = np.zeros(len(NAMES), dtype=bool)
            for name in ("hr", "spo2", "eeg_alpha"):
                values[INDEX[name]] = kn[name][i]
            if MASKED[0] <= i < MASKED[1]:
                quality[INDEX["hr"]] = 0.2
            if IMPUTED[0] <= i < IMPUTED[1]:
                imputed[INDEX["hr"]] = True
            frames.append(FeatureFrame(t=float(kn["t"][i]), values=values, quality=quality,
                                       imputed=imputed, schema_version=SCHEMA_VERSION))
        store.append_frames(frames)
        preds = []
        for j in range(6):  # a forecast every 10 min over the last hour
            i = N - 1 - 10 * j
            t = float(kn["t"][i])
            horizon = tuple(float(kn["hr"][i]) + 0.5 * (s + 1) for s in range(5))
            preds.append(Prediction(
                t=t, target="hr", step_s=STEP, horizon=horizon,
                band=tuple((h - 4.0, h + 4.0) for h in horizon),
                attention=tuple([1 / 12] * 12), imputed=((t - 600.0, t - 540.0),),
                model="forecaster-test", influence=tuple([0.0] * 9 + [0.2, 0.3, 0.5])))
        store.append_predictions(sorted(preds, key=lambda p: p.t))
        store.append_markers([Marker(MARKER_T, MARKER_TEXT, "cli")])
        store.commit()
        grant(store, "hr_mean", "day", T0 + DAY)
    finally:
        store.close()


def expected_day_stats(name: str, day: int) -> dict[str, Any]:
    """Mean/min/max/count of the measured values of a feature on a UTC day, computed here."""
    kn = known()
    k = kn["k"]
    on_day = (k >= day * 1440) & (k < (day + 1) * 1440)
    keep = on_day & ~((k >= HOLE[0]) & (k < HOLE[1]))
    if name == "hr":
        keep &= ~((k >= MASKED[0]) & (k < MASKED[1]))
        keep &= ~((k >= IMPUTED[0]) & (k < IMPUTED[1]))
    v = kn[name][keep]
    return {"n": int(v.size), "mean": float(v.mean()), "min": float(v.min()),
            "max": float(v.max()), "coverage": 100.0 * v.size / 1440}


class _Refs(HTMLParser):
    """Every URL-bearing attribute, every tag, and the text of <style> and <script>."""

    URL_ATTRS = frozenset({"src", "href", "action", "formaction", "srcset", "poster", "data",
                           "background", "xlink:href", "ping", "manifest", "cite"})

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self.scripts: dict[str, str] = {}
        self.styles: list[str] = []
        self._in: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        for name, value in attrs:
            if name in self.URL_ATTRS:
                self.refs.append((tag, name, value or ""))
        if tag in ("script", "style"):
            self._in = (tag, a.get("id") or f"#{len(self.scripts)}")

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in is None:
            return
        tag, key = self._in
        if tag == "script":
            self.scripts[key] = self.scripts.get(key, "") + data
        else:
            self.styles.append(data)


def parse(path: Path) -> tuple[_Refs, dict[str, Any]]:
    parser = _Refs()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser, json.loads(parser.scripts["report-data"])


@pytest.fixture
def outdir(tmp_path: Path) -> Path:
    """Where the reports go (the test's home and passphrase live beside it)."""
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def twin(home: Path) -> Path:
    from tests.sync.helpers import PASSPHRASE

    build_twin(home, PASSPHRASE)
    return home


def _report(run_cli, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return run_cli("report", "--from", str(T0), "--to", str(T0 + 2 * DAY - 1), "-o", str(out),
                   *extra)


def test_report_is_self_contained_and_holds_the_known_values(run_cli, twin: Path,  # type: ignore[no-untyped-def]
                                                             outdir: Path) -> None:
    out = outdir / "report.html"
    result = _report(run_cli, out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["frames"] == N - (HOLE[1] - HOLE[0])
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in outdir.iterdir() if p.name.startswith(".")] == []

    refs, doc = parse(out)
    # nothing refers outside the file: no src/href at all, no <link>, <iframe>, <img>
    assert refs.refs == [], refs.refs
    assert not {"link", "iframe", "img", "object", "embed", "base", "audio", "video"} & set(
        refs.tags)
    for css in refs.styles:
        assert "url(" not in css
        assert "@import" not in css
    # uPlot itself is inlined (its IIFE defines the global) and so is its stylesheet
    assert any("uPlot" in s and len(s) > 40_000 for s in refs.scripts.values())
    assert any(".uplot" in s for s in refs.styles)
    text = out.read_text(encoding="utf-8")
    assert "Content-Security-Policy" in text
    assert "default-src 'none'" in text

    charts = {c["id"]: c for c in doc["charts"]}
    assert set(charts) == {"hr", "spo2", "eeg"}  # only features with data get a chart
    assert [s["name"] for s in charts["eeg"]["series"]] == ["eeg_alpha"]
    kn = known()
    by_t = {round(float(t), 3): i for i, t in enumerate(kn["t"])}
    hr = charts["hr"]
    assert hr["source_rows"] == summary["frames"]
    assert 100 <= len(hr["t"]) <= 2000  # downsampled: 2,820 frames do not all go in
    seen = 0
    for t, v in zip(hr["t"], hr["y"][0], strict=True):
        if v is None:
            continue
        i = by_t[t]  # every drawn point is a stored frame, at its own time
        assert v == pytest.approx(kn["hr"][i], abs=1e-4)
        assert not (MASKED[0] <= i < MASKED[1])  # low-quality values are never drawn
        seen += 1
    assert seen > 100
    # the global extremes of the trace survive the downsampling
    finite = [v for v in hr["y"][0] if v is not None]
    usable = np.delete(kn["hr"], np.r_[MASKED[0]:MASKED[1], HOLE[0]:HOLE[1]])
    assert max(finite) == pytest.approx(usable.max(), abs=1e-4)
    assert min(finite) == pytest.approx(usable.min(), abs=1e-4)
    # the hole in time is a gap: a null inside it, so no line is drawn across
    ts = np.array(hr["t"])
    inside = (ts > kn["t"][HOLE[0] - 1]) & (ts < kn["t"][HOLE[1]])
    assert inside.any()
    assert all(hr["y"][0][i] is None for i in np.flatnonzero(inside))
    # shaded spans: the masked half hour and the imputed ten minutes, each one step wide
    assert hr["masked"] == [[kn["t"][MASKED[0]], kn["t"][MASKED[1] - 1] + STEP]]
    assert hr["imputed"] == [[kn["t"][IMPUTED[0]], kn["t"][IMPUTED[1] - 1] + STEP]]
    assert charts["spo2"]["masked"] == []
    # spo2 has few distinct values: every drawn one is the stored one at that time
    for t, v in zip(charts["spo2"]["t"], charts["spo2"]["y"][0], strict=True):
        if v is not None:
            assert v == pytest.approx(kn["spo2"][by_t[t]], abs=1e-4)

    # per-day statistics, against the same numbers computed here
    days = {d["day"]: d for d in doc["days"]}
    assert list(days) == ["2025-06-16", "2025-06-17"]
    for day, label in enumerate(days):
        for name in ("hr", "spo2", "eeg_alpha"):
            got = days[label]["features"][name]
            want = expected_day_stats(name, day)
            assert got["n"] == want["n"]
            for key in ("mean", "min", "max"):
                assert got[key] == pytest.approx(want[key], abs=1e-3), (label, name, key)
            assert got["coverage"] == pytest.approx(want["coverage"], abs=0.05)
    assert days["2025-06-16"]["features"]["hr"]["imputed"] == pytest.approx(10 / 1440 * 100,
                                                                           abs=0.05)
    assert "rmssd" not in days["2025-06-16"]["features"]
    # ... and the printed table says the same
    want = expected_day_stats("hr", 0)
    row = re.search(r"<tr data-day='2025-06-16' data-feature='hr'>(.*?)</tr>", text, re.S)
    assert row is not None
    cells = re.findall(r"<td class='num'>([^<]*)</td>", row.group(1))
    assert cells[:4] == [f"{want['mean']:.1f}", f"{want['min']:.1f}", f"{want['max']:.1f}",
                         f"{want['n']:,}"]
    assert cells[4] == f"{round(want['coverage'], 1):g} %"

    # markers: in the data and the table, escaped (no tag injected, no template re-expansion)
    assert doc["markers"] == [{"t": MARKER_T, "text": MARKER_TEXT, "source": "cli"}]
    assert "took 5 mg &lt;b&gt;drug&lt;/b&gt; {{DATA}}" in text
    assert "<b>drug</b>" not in text

    # forecasts: the newest per target with band and explanation, and its own chart
    newest = doc["forecasts"][0]
    assert newest["t"] == kn["t"][N - 1]
    assert newest["band"][0] == pytest.approx([kn["hr"][N - 1] + 0.5 - 4, kn["hr"][N - 1] + 4.5],
                                              abs=1e-3)
    assert "driven mostly by the last" in newest["explanation"]
    assert "imputed" in newest["explanation"]
    (fc,) = doc["forecast_charts"]
    assert fc["id"] == "forecast_hr"
    assert fc["horizon"][-5:] == pytest.approx([kn["hr"][N - 1] + 0.5 * s for s in range(1, 6)],
                                               abs=1e-3)
    assert fc["t"][-1] == kn["t"][N - 1] + 5 * STEP

    # sources and privacy
    (src,) = doc["sources"]
    assert src["name"] == "wrist"
    assert src["samples"] == summary["frames"]
    granted = [c["metric"] for c in doc["privacy"]["consents"] if c["granted"]]
    assert granted == ["hr_mean"]
    assert "hr_mean: one differentially private summary per day" in text
    assert doc["privacy"]["budget"]["epsilon_spent"] == 0.0


def test_the_score_is_the_one_predictions_score_computes(run_cli, twin: Path,  # type: ignore[no-untyped-def]
                                                         outdir: Path) -> None:
    out = outdir / "report.html"
    assert _report(run_cli, out).exit_code == 0
    _, doc = parse(out)
    cli = run_cli("predictions", "--score", "--json")
    assert cli.exit_code == 0, cli.output
    want = json.loads(cli.output)
    assert doc["score"]["available"] is True
    assert doc["score"]["now"] == want["now"]
    assert doc["score"]["windows"] == want["windows"]


def test_png_writes_one_decodable_image_per_chart(run_cli, twin: Path,  # type: ignore[no-untyped-def]
                                                  outdir: Path) -> None:
    from PIL import Image

    from edgetwin.web.report_png import HEIGHT_PX, WIDTH_PX

    out, png_dir = outdir / "r.html", outdir / "png"
    result = _report(run_cli, out, "--png", str(png_dir), "--json")
    assert result.exit_code == 0, result.output
    _, doc = parse(out)
    ids = [c["id"] for c in doc["charts"]] + [c["id"] for c in doc["forecast_charts"]]
    assert sorted(p.name for p in png_dir.iterdir()) == sorted(f"{i}.png" for i in ids)
    for p in png_dir.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        with Image.open(p) as im:
            im.load()
            assert im.size == (WIDTH_PX, HEIGHT_PX)
            # not a blank canvas: a drawn chart has many colours
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50
    # a second run refuses to overwrite the PNGs without --force, and writes no HTML either
    out2 = outdir / "r2.html"
    again = _report(run_cli, out2, "--png", str(png_dir))
    assert again.exit_code == 2
    assert "already holds" in again.output
    assert "--force" in again.output
    assert not out2.exists()


def test_png_without_matplotlib_names_the_extra(run_cli, twin: Path, outdir: Path,  # type: ignore[no-untyped-def]
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = outdir / "r.html"
    result = _report(run_cli, out, "--png", str(outdir / "png"))
    assert result.exit_code == 2
    assert "--png needs matplotlib" in result.output
    assert "pip install 'edgetwin[report]'" in result.output
    assert not out.exists()
    assert not (outdir / "png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", str(T0 + DAY), "--to", str(T0)], "is not before --to"),
        (["--from", str(T0), "--to", str(T0)], "is not before --to"),
        (["--from", "4102444800"], "is in the future"),
        (["--from", str(T0 - 10 * DAY), "--to", str(T0 - 9 * DAY)],
         "the twin holds no feature frames from 2025-06-06 00:00:00Z to 2025-06-07 00:00:00Z"),
        (["--from", "yesterday-ish"], "--from 'yesterday-ish' is not a time"),
    ],
)
def test_unreadable_ranges_are_refused_precisely(run_cli, twin: Path, outdir: Path,  # type: ignore[no-untyped-def]
                                                 args: list[str], message: str) -> None:
    out = outdir / "r.html"
    result = run_cli("report", *args, "-o", str(out))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()
    assert list(outdir.iterdir()) == []


def test_no_data_names_the_span_the_twin_holds(run_cli, twin: Path, outdir: Path) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("report", "--from", str(T0 - 10 * DAY), "--to", str(T0 - 9 * DAY),
                     "-o", str(outdir / "r.html"))
    assert result.exit_code == 2
    assert "the twin holds samples from 2025-06-16 00:00:00Z to 2025-06-17 23:59:00Z" in (
        result.output)


def test_an_existing_file_is_kept_unless_force(run_cli, twin: Path, outdir: Path) -> None:  # type: ignore[no-untyped-def]
    out = outdir / "report.html"
    out.write_text("keep me")
    result = _report(run_cli, out)
    assert result.exit_code == 2
    assert f"{out} already exists" in result.output
    assert "--force" in result.output
    assert out.read_text() == "keep me"
    result = _report(run_cli, out, "--force")
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(p.name for p in outdir.iterdir()) == ["report.html"]


def test_a_missing_directory_is_named(run_cli, twin: Path, outdir: Path) -> None:  # type: ignore[no-untyped-def]
    out = outdir / "nope" / "report.html"
    result = _report(run_cli, out)
    assert result.exit_code == 2
    assert f"the directory {out.parent} does not exist" in result.output


def test_a_failed_write_leaves_nothing_half_written(run_cli, twin: Path, outdir: Path,  # type: ignore[no-untyped-def]
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    out = outdir / "report.html"
    out.write_text("the old report")
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        if os.fstat(fd).st_size > 10_000:  # the report's temporary file, not SQLite's
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    result = _report(run_cli, out, "--force")
    assert result.exit_code == 2, result.output
    assert f"writing {out} failed: No space left on device" in result.output
    assert out.read_text() == "the old report"
    assert sorted(p.name for p in outdir.iterdir()) == ["report.html"]


def test_a_wrong_passphrase_is_exit_3(run_cli, twin: Path, outdir: Path,  # type: ignore[no-untyped-def]
                                      passphrase_file: Path) -> None:
    passphrase_file.write_text("not the passphrase\n")
    result = _report(run_cli, outdir / "r.html")
    assert result.exit_code == 3
    assert not (outdir / "r.html").exists()


def _bench_module() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_report.py"
    spec = importlib.util.spec_from_file_location("edgetwin_bench_report", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_day_at_1hz_stays_small(run_cli, home: Path, outdir: Path) -> None:  # type: ignore[no-untyped-def]
    """Long ranges are downsampled on the server: every chart stays within 2,000 rows."""
    from tests.sync.helpers import PASSPHRASE

    spike_t = _bench_module().write_frames(home, PASSPHRASE, days=1, hz=1.0, spike=True)
    out = outdir / "day.html"
    result = run_cli("report", "--from", str(T0), "--to", str(T0 + DAY), "-o", str(out))
    assert result.exit_code == 0, result.output
    _, doc = parse(out)
    for chart in doc["charts"]:
        assert chart["source_rows"] == 86_400
        assert len(chart["t"]) <= 2000, chart["id"]
    hr = next(c for c in doc["charts"] if c["id"] == "hr")
    i = hr["y"][0].index(180.0)  # the one spike survives, at its own time
    assert hr["t"][i] == spike_t
    assert out.stat().st_size < 1_500_000


def test_without_a_range_it_reports_the_week_up_to_the_newest_sample(run_cli, twin: Path,  # type: ignore[no-untyped-def]
                                                                     outdir: Path) -> None:
    out = outdir / "r.html"
    result = run_cli("report", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    newest = T0 + STEP * (N - 1)
    assert summary["to"] == newest
    assert summary["from"] == newest - 7 * DAY
    assert summary["frames"] == N - (HOLE[1] - HOLE[0])
    assert summary["charts"] == ["hr", "spo2", "eeg", "forecast_hr"]


def test_a_damaged_chunk_is_exit_4_not_a_report_with_a_hole(run_cli, twin: Path,  # type: ignore[no-untyped-def]
                                                           outdir: Path) -> None:
    import sqlite3

    with sqlite3.connect(twin / "twin.db") as db:
        # every chunk of every series damaged: the frames cannot be read
        db.execute("UPDATE chunk SET sealed = zeroblob(64)")
    out = outdir / "r.html"
    result = _report(run_cli, out)
    assert result.exit_code == 4, result.output
    assert "edgetwin: error:" in result.output
    assert not out.exists()


def test_a_range_without_forecasts_says_so(run_cli, twin: Path, outdir: Path) -> None:  # type: ignore[no-untyped-def]
    out = outdir / "day1.html"
    result = run_cli("report", "--from", str(T0), "--to", str(T0 + DAY - 1), "-o", str(out))
    assert result.exit_code == 0, result.output
    _, doc = parse(out)
    assert doc["forecasts"] == []
    assert doc["forecast_charts"] == []
    assert doc["score"] == {"available": False,
                            "reason": "no forecasts were stored in the last hour of this range"}
    text = out.read_text(encoding="utf-8")
    assert "No forecasts were stored in the last hour of this range." in text
    assert [d["day"] for d in doc["days"]] == ["2025-06-16"]


@pytest.mark.parametrize(("capacity", "block"), [(0, 4), (10, 4), (50, 16), (1000, 7)])
def test_columns_hold_every_frame_whatever_the_capacity(capacity: int, block: int) -> None:
    """Rows past the capacity (a daemon appending meanwhile) grow the columns; blocks out of
    order come back sorted; low quality is masked, imputed kept only where usable."""
    from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION
    from edgetwin.types import FeatureFrame
    from edgetwin.web.report import Columns

    rng = np.random.default_rng(3)
    n = 50
    ts = T0 + STEP * rng.permutation(n)
    frames = []
    for t in ts:
        values = np.full(len(NAMES), np.nan)
        values[INDEX["hr"]] = 60 + (t - T0) / STEP
        quality = np.ones(len(NAMES))
        quality[INDEX["hr"]] = 0.1 if (t - T0) / STEP % 10 == 3 else 0.9
        imputed = np.zeros(len(NAMES), dtype=bool)
        imputed[INDEX["hr"]] = (t - T0) / STEP % 5 == 3
        frames.append(FeatureFrame(t=float(t), values=values, quality=quality, imputed=imputed,
                                   schema_version=SCHEMA_VERSION))
    from edgetwin.store.codec import FrameColumns

    blocks = [  # as the store hands them over: a block per chunk of `block` frames
        FrameColumns(np.array([f.t for f in part]), np.stack([f.values for f in part]),
                     np.stack([f.quality for f in part]), np.stack([f.imputed for f in part]),
                     SCHEMA_VERSION)
        for part in (frames[i : i + block] for i in range(0, n, block))
    ]
    cols = Columns.from_blocks(iter(blocks), capacity=capacity)
    k = np.arange(n)
    assert cols.t.tolist() == (T0 + STEP * k).tolist()
    low = k % 10 == 3
    hr = cols.values[:, INDEX["hr"]]
    assert np.array_equal(np.isnan(hr), low)
    assert hr[~low].tolist() == (60.0 + k[~low]).tolist()
    assert cols.masked[:, INDEX["hr"]].tolist() == low.tolist()
    assert not cols.masked[:, INDEX["spo2"]].any()  # absent is not masked
    assert cols.imputed[:, INDEX["hr"]].tolist() == ((k % 5 == 3) & ~low).tolist()


def test_a_range_too_large_for_memory_is_a_precise_error(run_cli, twin: Path, outdir: Path,  # type: ignore[no-untyped-def]
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetwin.web import report

    def no_memory(*_a: Any, **_k: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(report.Columns, "from_blocks", no_memory)
    out = outdir / "r.html"
    result = _report(run_cli, out)
    assert result.exit_code == 2
    assert "holds more frames than this machine's memory can chart at once" in result.output
    assert "make a report per month" in result.output
    assert not out.exists()
