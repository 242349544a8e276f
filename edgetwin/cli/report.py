"""``edgetwin report``: one self-contained HTML file of a range, to keep or hand on."""

from __future__ import annotations

import time
from pathlib import Path

import click

from edgetwin.cli.common import AppContext, emit_json, json_option, pass_app


@click.command("report")
@click.option("--from", "t_from", default=None,
              help="Start (epoch s, ISO time, or -7d) [default: 7 days before --to].")
@click.option("--to", "t_to", default=None,
              help="End (epoch s, ISO time, or -5m) [default: the newest stored sample].")
@click.option("-o", "--output", "output", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML file to write (mode 0600; it holds health data).")
@click.option("--png", "png_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Also write each chart as a PNG into this directory (needs edgetwin[report]).")
@click.option("--force", is_flag=True, help="Replace an existing report (and PNGs).")
@json_option
@pass_app
def report_cmd(
    app: AppContext, t_from: str | None, t_to: str | None, output: Path, png_dir: Path | None,
    force: bool,
) -> None:
    """Write a self-contained HTML report: traces with quality and imputed spans, markers,
    forecasts with their explanation, the twin's score, sources, privacy, per-day statistics.

    It opens offline in any browser and loads nothing from anywhere.
    """
    from edgetwin.cli.data import parse_time
    from edgetwin.cli.unlock import open_twin_from_app
    from edgetwin.errors import UsageError
    from edgetwin.web import report

    started = time.perf_counter()
    now = time.time()
    t0 = parse_time(t_from, option="--from")
    t1 = parse_time(t_to, option="--to")
    report.check_range(t0, t1, now)
    if output.exists() and not force:
        raise UsageError(f"{output} already exists",
                         hint="pass --force to replace it, or give another -o path")
    if not output.parent.is_dir():
        raise UsageError(f"cannot write {output}: the directory {output.parent} does not exist",
                         hint="create it first, or give another -o path")
    png = None
    if png_dir is not None:
        from edgetwin.web import report_png

        report_png.require_matplotlib()
        png = report_png
    app.require_home()
    config = app.config()
    with open_twin_from_app(app) as store:
        streams = store.streams()
        t0, t1 = report.default_range(t0, t1, streams, now)
        report.check_range(t0, t1, now)
        doc = report.collect(store, t0, t1, privacy=config.privacy, now=now,
                             default_step_s=config.twin.step_s)
    page = report.render_html(doc).encode("utf-8")
    pngs: list[str] = []
    if png is not None and png_dir is not None:
        pngs = [str(p) for p in png.write_pngs(doc, png_dir, force=force)]
    report.write_private(output, page, force=force)
    elapsed = time.perf_counter() - started
    result = {
        "output": str(output),
        "bytes": len(page),
        "from": t0,
        "to": t1,
        "frames": doc["frames"],
        "charts": [c["id"] for c in doc["charts"]] + [c["id"] for c in doc["forecast_charts"]],
        "days": len(doc["days"]),
        "markers": doc["markers_total"],
        "pngs": pngs,
        "seconds": round(elapsed, 3),
    }
    if app.as_json:
        emit_json(result)
        return
    click.echo(f"wrote {output} ({len(page) / 1024:,.0f} KiB, {len(result['charts'])} charts, "
               f"{doc['frames']:,} frames over {len(doc['days'])} UTC days) in {elapsed:.1f} s")
    if pngs:
        click.echo(f"wrote {len(pngs)} PNG charts into {png_dir}")
