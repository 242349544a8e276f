"""The report's charts as PNG files, drawn on the server with matplotlib (Agg, no display).

matplotlib is the optional extra ``report`` (``pip install 'edgetwin[report]'``); every
chart of the HTML report (traces and forecasts) becomes one ``<chart id>.png`` of
:data:`WIDTH_PX` x :data:`HEIGHT_PX`, written atomically with mode 0600.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from edgetwin.errors import HomeError, UsageError

WIDTH_PX = 1200
HEIGHT_PX = 400
DPI = 100
_COLORS = ["#1f5fbf", "#c0392b", "#2e8b57", "#8e44ad", "#d35400", "#16a085"]
_MASK = (0.47, 0.47, 0.47, 0.18)
_IMPUTED = (0.94, 0.55, 0.08, 0.22)
_MARKER = "#7a3db8"


def require_matplotlib() -> None:
    """UsageError naming the extra when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401  (only whether it imports)
    except ImportError as exc:
        raise UsageError(
            "--png needs matplotlib, which is not installed in this environment",
            hint="install the report extra: pip install 'edgetwin[report]' (or drop --png; "
                 "the HTML report needs nothing extra)",
        ) from exc


def chart_names(doc: dict[str, Any]) -> list[str]:
    """The PNG file names the report's charts become, in report order."""
    return [f"{c['id']}.png" for c in [*doc["charts"], *doc["forecast_charts"]]]


def write_pngs(doc: dict[str, Any], directory: Path, *, force: bool) -> list[Path]:
    """Draw every chart of ``doc`` into ``directory`` (created 0700 if missing); refuses to
    replace an existing PNG unless ``force`` (checked for all before the first is written)."""
    from edgetwin.web.report import write_private

    require_matplotlib()
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--png {directory} is not a directory", hint="give a directory path")
    targets = [directory / name for name in chart_names(doc)]
    if not force:
        existing = [p.name for p in targets if p.exists()]
        if existing:
            raise UsageError(f"{directory} already holds {', '.join(existing[:3])}"
                             + (" ..." if len(existing) > 3 else ""),
                             hint="pass --force to replace them, or give another --png directory")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise HomeError(f"cannot create {directory}: {exc.strerror}",
                        hint="choose a directory you can write to") from exc
    written = []
    charts = [*doc["charts"], *doc["forecast_charts"]]
    for chart, path in zip(charts, targets, strict=True):
        write_private(path, render_png(chart, doc["markers"]), force=True)
        written.append(path)
    return written


def render_png(chart: dict[str, Any], markers: list[dict[str, Any]]) -> bytes:
    """One chart of the report document as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import UTC, AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    t = np.asarray(chart["t"], dtype=np.float64)
    x = _dates(t)
    if "series" in chart:
        for i, (s, ys) in enumerate(zip(chart["series"], chart["y"], strict=True)):
            ax.plot(x, _col(ys), color=_COLORS[i % len(_COLORS)], linewidth=1.0,
                    label=s["label"])
    else:  # a forecast chart
        ax.plot(x, _col(chart["observed"]), color=_COLORS[0], linewidth=1.0, label="measured")
        ax.fill_between(x, _col(chart["lo"]), _col(chart["hi"]), color=_COLORS[1], alpha=0.15,
                        linewidth=0, label="band")
        ax.plot(x, _col(chart["horizon"]), color=_COLORS[1], linewidth=2.0, linestyle="--",
                label="forecast")
    if t.size:
        lo, hi = float(t.min()), float(t.max())
        for spans, color in ((chart.get("masked", []), _MASK), (chart.get("imputed", []),
                                                                 _IMPUTED)):
            for a, b in spans:
                s0, s1 = max(a, lo), min(b, hi)
                if s1 > s0:
                    ax.axvspan(_dates(np.array([s0]))[0], _dates(np.array([s1]))[0],
                               color=color, linewidth=0)
        for m in markers:
            if lo <= m["t"] <= hi:
                ax.axvline(_dates(np.array([m["t"]]))[0], color=_MARKER, linewidth=0.8,
                           linestyle=":")
    locator = AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]  # untyped in mpl
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(
        ConciseDateFormatter(locator, tz=UTC)  # type: ignore[no-untyped-call]  # untyped in mpl
    )
    ax.set_title(chart["title"], fontsize=11, loc="left")
    ax.set_ylabel(chart.get("unit", ""))
    ax.set_xlabel("UTC")
    ax.grid(True, linewidth=0.3, alpha=0.5)
    ax.legend(loc="upper right", fontsize=8, frameon=False, ncols=6)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.15)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _dates(t: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return (np.asarray(t, dtype=np.float64) * 1e3).astype("datetime64[ms]")


def _col(values: list[float | None]) -> np.ndarray[Any, Any]:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
