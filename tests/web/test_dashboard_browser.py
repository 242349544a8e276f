"""The dashboard in a real headless browser (Debian's chromium through the system
chromedriver, driven by selenium): every page loads without console errors (CSP violations
and failed requests are console errors too), the timeline chart holds what the server
computed for a known twin, confirmations guard actions, and a live update arrives from the
real daemon running the simulator. Screenshots go to $EDGETWIN_ARTEFACTS (else tmp)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgetwin.store import Secret, TwinStore
from edgetwin.web import data
from tests.web.test_dashboard_twin import GAP, IMPUTED, PASS, N, build_twin, frame_t, hr_at

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
EXE = [sys.executable, "-m", "edgetwin"]
PAGES = ("/", "/timeline", "/forecasts", "/privacy", "/devices")


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = os.environ.get("EDGETWIN_ARTEFACTS")
    out = Path(base) / "dashboard" if base else tmp_path_factory.mktemp("dashboard-artefacts")
    out.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {out}")
    return out


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Debian's chromium and chromium-driver are needed: run scripts/bootstrap --dev"
                    " (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _env(tmp_path: Path, home: Path) -> dict[str, str]:
    pw = tmp_path / "pw"
    pw.write_text(PASS + "\n")
    pw.chmod(0o600)
    return {**os.environ, "EDGETWIN_HOME": str(home), "EDGETWIN_PASSPHRASE_FILE": str(pw),
            "EDGETWIN_KDF_PROFILE": "test"}


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``edgetwin dashboard`` over the known twin: (URL with token, home)."""
    home = tmp_path / "home"
    build_twin(home)
    proc = subprocess.Popen([*EXE, "dashboard", "--port", "0", "--json"],
                            env=_env(tmp_path, home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else "no output"
        yield json.loads(line)["url"], home
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()


def _errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _ready(driver: Any, timeout: float = 20) -> None:
    _wait(driver, "return !!(window.edgetwin && window.edgetwin.ready)", timeout)


def _wait(driver: Any, script: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


def test_every_page_loads_without_console_errors(
    browser: Any, stored: tuple[str, Path], artefacts: Path
) -> None:
    url, _home = stored
    base = url.split("/?")[0]
    browser.get(url)  # the token URL: cookie, then redirect to /
    assert browser.current_url == base + "/"
    for path in PAGES:
        browser.get(base + path)
        _ready(browser)
        assert _errors(browser) == [], path
        assert browser.execute_script("return document.body.dataset.page") == (
            "now" if path == "/" else path.strip("/"))
        shot = artefacts / f"stored-{'now' if path == '/' else path.strip('/')}.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 5000
    # the forecast chart and the attention strip are drawn
    browser.get(base + "/forecasts")
    _ready(browser)
    n = browser.execute_script(
        "return window.edgetwin.charts.forecasts.hr.data[2].filter(v => v !== null).length")
    assert n == 6
    # the audit chain is shown verified
    browser.get(base + "/privacy")
    _ready(browser)
    assert "verified" in browser.find_element("id", "audit-chain").text


def test_timeline_chart_holds_the_servers_points_and_the_known_values(
    browser: Any, stored: tuple[str, Path], artefacts: Path
) -> None:
    url, home = stored
    base = url.split("/?")[0]
    browser.get(url)
    t0, t1 = frame_t(0), frame_t(N - 1)
    browser.get(f"{base}/timeline?from={t0}&to={t1}&points=300")
    _ready(browser)
    assert _errors(browser) == []
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        expected = data.timeline(store, t0, t1, points=300)
    xs, ys = browser.execute_script(
        "const u = window.edgetwin.charts.timeline.plots.hr; return [u.data[0], u.data[1]];")
    assert len(xs) == len(expected["points"]["t"])
    assert len(xs) < N  # downsampled on the server, not in the browser
    assert xs == expected["points"]["t"]
    seen_gap = False
    for t, v in zip(xs, ys, strict=True):
        k = round((t - frame_t(0)) / 5.0)
        if GAP[0] <= k < GAP[1]:
            assert v is None
            seen_gap = True
        else:
            assert v == hr_at(k), (t, v)
    assert seen_gap
    spans = browser.execute_script(
        "return window.edgetwin.charts.timeline.doc.shading.hr.imputed")
    assert spans == [[frame_t(IMPUTED[0]), frame_t(IMPUTED[1])]]
    assert browser.execute_script("return window.edgetwin.charts.timeline.doc.markers.length") == 1
    browser.save_screenshot(str(artefacts / "timeline-known-twin.png"))
    # zoom: a drag selection over the chart fetches that range again, downsampled afresh
    browser.execute_script(
        "const u = window.edgetwin.charts.timeline.plots.hr;"
        "const l = u.valToPos(arguments[0], 'x'), r = u.valToPos(arguments[1], 'x');"
        "u.setSelect({left: l, width: r - l, top: 0, height: u.bbox.height});",
        frame_t(100), frame_t(160))
    _wait(browser, f"return window.edgetwin.charts.timeline.doc.to < {frame_t(200)}")
    zx, zy = browser.execute_script(
        "const u = window.edgetwin.charts.timeline.plots.hr; return [u.data[0], u.data[1]];")
    zoomed = [(t, v) for t, v in zip(zx, zy, strict=True) if frame_t(101) <= t <= frame_t(159)]
    assert len(zoomed) == 59  # every frame inside the zoomed span, none skipped
    assert all(v == hr_at(round((t - frame_t(0)) / 5.0)) for t, v in zoomed)


def test_an_action_needs_the_confirmation_in_the_page(
    browser: Any, stored: tuple[str, Path]
) -> None:
    url, home = stored
    base = url.split("/?")[0]
    browser.get(url)
    browser.get(base + "/privacy")
    _ready(browser)
    button = browser.find_element("css selector", 'button[data-action="consent/revoke"]')
    button.click()
    browser.find_element("id", "confirm-no").click()
    time.sleep(0.5)
    assert _granted(home)["hr_mean"] is True  # cancelled: nothing changed
    browser.find_element("css selector", 'button[data-action="consent/revoke"]').click()
    browser.find_element("id", "confirm-yes").click()
    deadline = time.monotonic() + 20
    while _granted(home)["hr_mean"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _granted(home)["hr_mean"] is False
    assert _errors(browser) == []


def _granted(home: Path) -> dict[str, bool]:
    from edgetwin.privacy.consent import list_consents

    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        return {c.metric: c.granted for c in list_consents(store)}


def test_a_live_update_arrives_from_the_running_daemon(
    browser: Any, tmp_path: Path, artefacts: Path
) -> None:
    home = tmp_path / "home"
    env = _env(tmp_path, home)
    _cli(env, "init")
    _cli(env, "pair", "add", "simulator", "--seed", "4", "--speed", "20")
    port = _free_port()
    (home / "config.toml").write_text(
        f"[daemon]\nflush_interval_s = 0.2\n\n[dashboard]\nport = {port}\n")
    proc = subprocess.Popen([*EXE, "daemon", "run"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = _daemon_url(env, proc, port)
        base = url.split("/?")[0]
        browser.get(url)
        _ready(browser)
        # Now: status events from the daemon, about once a second
        status = _wait(browser, "const e = window.edgetwin.status; return e && e.daemon.running "
                       "&& e.sources.length && e.sources[0].samples > 0 ? e : null", 60)
        assert status["sources"][0]["name"] == "simulator"
        assert status["sources"][0]["state_since"] <= time.time()  # the daemon noted it
        browser.save_screenshot(str(artefacts / "live-now.png"))
        # Timeline: new frames arrive as events and extend the chart
        browser.get(base + "/timeline?range=300")
        _ready(browser)
        _wait(browser, "return window.edgetwin.charts.timeline && "
              "Object.keys(window.edgetwin.charts.timeline.plots).length > 0", 90)
        n0, last0 = browser.execute_script(
            "const p = Object.values(window.edgetwin.charts.timeline.plots)[0];"
            "return [p.data[0].length, p.data[0][p.data[0].length - 1]];")
        _wait(browser, "const p = Object.values(window.edgetwin.charts.timeline.plots)[0];"
              f"return p.data[0].length > {n0} && p.data[0][p.data[0].length - 1] > {last0};", 60)
        lat = browser.execute_script("return window.edgetwin.latencies")
        assert lat and all(x < 30 for x in lat)  # sanity only; the bench measures it
        assert _errors(browser) == []
        browser.save_screenshot(str(artefacts / "live-timeline.png"))
        # actions through the daemon: a consent on its writer thread, a forget by its control
        # path, each after the in-page confirmation
        browser.get(base + "/privacy")
        _ready(browser)
        browser.find_element(
            "css selector", 'button[data-action="consent/grant"][data-metric="hr_mean"]').click()
        browser.find_element("id", "confirm-yes").click()
        _wait(browser, "return !!document.querySelector("
              "'button[data-action=\"consent/revoke\"][data-metric=\"hr_mean\"]')", 30)
        consents = json.loads(_cli_out(env, "consent", "list", "--json"))
        assert {c["metric"]: c["granted"] for c in consents}["hr_mean"] is True
        browser.find_element("id", "forget-stream").send_keys("simulator.eeg")
        browser.find_element(
            "css selector", 'button[data-action="forget"][data-field="stream"]').click()
        browser.find_element("id", "confirm-yes").click()
        _wait(browser, "const t = document.getElementById('toast'); return t && t.textContent"
              " === 'done'", 60)
        status = json.loads(_cli_out(env, "status", "--json"))
        assert status["daemon"]["forgets"] == 1
        audit = json.loads(_cli_out(env, "audit", "--json"))
        events = [e["event"] for e in audit["entries"]]
        assert "consent.grant" in events
        assert any("forget" in e for e in events)
        assert _errors(browser) == []
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        finally:
            if proc.stderr:
                proc.stderr.close()
    assert proc.returncode == 0


def _daemon_url(env: dict[str, str], proc: subprocess.Popen[str], port: int) -> str:
    home = Path(env["EDGETWIN_HOME"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "daemon died"
        if (home / "dashboard.token").exists():
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
        time.sleep(0.2)
    else:
        raise AssertionError("the daemon's dashboard never came up")
    # the daemon is up: 'edgetwin dashboard' prints its URL instead of serving the store
    r = subprocess.run([*EXE, "dashboard", "--json"], env=env, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["served_by"] == "daemon"
    assert f":{port}/?token=" in doc["url"]
    return str(doc["url"])


def _cli(env: dict[str, str], *args: str) -> None:
    r = subprocess.run([*EXE, *args], env=env, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr


def _cli_out(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([*EXE, *args], env=env, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

