"""The report in a real browser (Debian's chromium, headless, its network cut off): it opens
from the file without a console message, draws every chart, and asks for nothing.

The network log is Chromium's own (``--log-net-log``); requests the page makes carry the
page's origin as initiator, Chromium's background requests carry none, and a control page
with external references proves the log would show the page's requests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.web.test_report import DAY, T0, build_twin, parse

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


def _chromium(page: Path, work: Path, *extra: str) -> tuple[str, str, list[dict[str, str]]]:
    """Open ``page`` headless with every name unresolvable; (DOM, stderr, page requests)."""
    assert CHROMIUM is not None, (
        "chromium is missing: 'scripts/bootstrap --dev' installs Debian's chromium")
    net = work / f"{page.stem}-net.json"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={work / (page.stem + '-profile')}",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--no-default-browser-check",
         # the network is off: no name resolves, so nothing could be fetched anyway
         "--host-resolver-rules=MAP * ~NOTFOUND",
         "--enable-logging=stderr", "--v=0", f"--log-net-log={net}",
         "--virtual-time-budget=3000", *extra, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = json.loads(net.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    requests = [
        {"url": e["params"]["url"], "initiator": e["params"].get("initiator", "")}
        for e in log["events"]
        if names.get(e["type"]) == "URL_REQUEST_START_JOB" and "url" in e.get("params", {})
        and e["params"].get("initiator") != "not an origin"  # Chromium's own, not the page's
    ]
    return proc.stdout, proc.stderr, requests


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_the_report_renders_offline_without_errors_or_requests(run_cli, home: Path,  # type: ignore[no-untyped-def]
                                                               tmp_path: Path) -> None:
    from tests.sync.helpers import PASSPHRASE

    build_twin(home, PASSPHRASE)
    out = tmp_path / "report.html"
    result = run_cli("report", "--from", str(T0), "--to", str(T0 + 2 * DAY - 1), "-o", str(out))
    assert result.exit_code == 0, result.output
    _, doc = parse(out)
    n_charts = len(doc["charts"]) + len(doc["forecast_charts"])
    assert n_charts == 4

    dom, stderr, requests = _chromium(out, tmp_path, "--dump-dom")
    assert requests == []
    assert _console(stderr) == []
    assert re.search(r'<div id="js-errors" role="alert">\s*</div>', dom), "a script error"
    assert f'data-charts-rendered="{n_charts}"' in dom
    for chart in [*doc["charts"], *doc["forecast_charts"]]:
        section = re.search(rf'<section class="chart" id="chart-{chart["id"]}">(.*?)</section>',
                            dom, re.S)
        assert section is not None, chart["id"]
        assert 'class="uplot' in section.group(1)
        assert "<canvas" in section.group(1)
    # every series of a chart is in its legend (uPlot builds it from the inlined data)
    assert dom.count("u-series") >= sum(len(c["series"]) + 1 for c in doc["charts"])

    shot = tmp_path / "report.png"
    _, stderr, requests = _chromium(out, tmp_path, f"--screenshot={shot}",
                                    "--window-size=1200,2000")
    assert requests == []
    assert _console(stderr) == []
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1200, 2000)
        # charts drawn: the page is far from a blank sheet of text
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or ()) > 200


def test_the_report_prints(run_cli, home: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """What a person hands on may be paper: chromium prints it (print CSS, charts resized for
    the page) to a PDF of a few A4 pages, without a console message or a request."""
    from tests.sync.helpers import PASSPHRASE

    build_twin(home, PASSPHRASE)
    out = tmp_path / "report.html"
    assert run_cli("report", "--from", str(T0), "--to", str(T0 + 2 * DAY - 1),
                   "-o", str(out)).exit_code == 0
    pdf = tmp_path / "report.pdf"
    _, stderr, requests = _chromium(out, tmp_path, f"--print-to-pdf={pdf}",
                                    "--no-pdf-header-footer")
    assert requests == []
    assert _console(stderr) == []
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page[^s]", data))
    assert 2 <= pages <= 12, pages


def test_the_checks_would_see_a_request_and_a_console_error(tmp_path: Path) -> None:
    """Guards the guard: a page with external references and a failing script shows both."""
    page = tmp_path / "control.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://example.invalid/x.png">'
                    '<script src="https://cdn.example.invalid/lib.js"></script>'
                    "<script>console.error('control'); notDefined();</script></body></html>")
    _, stderr, requests = _chromium(page, tmp_path, "--dump-dom")
    urls = {r["url"] for r in requests}
    assert "http://example.invalid/x.png" in urls
    assert "https://cdn.example.invalid/lib.js" in urls
    assert any("control" in line for line in _console(stderr))
    assert any("notDefined" in line for line in _console(stderr))
