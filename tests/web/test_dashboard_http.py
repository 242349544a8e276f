"""The dashboard over real HTTP on loopback: token, cookie, 401, CSP, origin, CSRF, TLS-only
remote listening, and the pages' data for a known twin."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edgetwin.config import Config, DashboardConfig, parse_config
from edgetwin.errors import ConfigError, HomeError
from edgetwin.privacy.consent import list_consents
from edgetwin.store import Secret, TwinStore
from edgetwin.web.app import Dashboard, DashboardRefused, StoreBackend
from edgetwin.web.security import CSP, load_or_create_token
from tests.web.test_dashboard_twin import GAP, MARKER_TEXT, PASS, N, build_twin, frame_t, hr_at


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Dashboard, TwinStore]]:
    home = tmp_path / "home"
    build_twin(home)
    store = TwinStore.open(home, Secret.passphrase(PASS))
    dash = Dashboard(home, StoreBackend(store, Config()), DashboardConfig(port=0))
    await dash.start()
    try:
        yield dash, store
    finally:
        await dash.stop()
        store.close()


async def _login(dash: Dashboard, session: aiohttp.ClientSession) -> None:
    async with session.get(dash.url, allow_redirects=False) as r:
        assert r.status == 303


async def _csrf(dash: Dashboard, session: aiohttp.ClientSession) -> str:
    async with session.get(dash.base_url + "/privacy") as r:
        html = await r.text()
    start = html.index('name="csrf-token" content="') + len('name="csrf-token" content="')
    return html[start : html.index('"', start)]


def _jar() -> aiohttp.CookieJar:
    return aiohttp.CookieJar(unsafe=True)  # cookies for an IP address host (127.0.0.1)


async def test_no_token_no_data(served: tuple[Dashboard, TwinStore]) -> None:
    dash, _ = served
    async with aiohttp.ClientSession() as s:
        for path in ("/", "/timeline", "/api/timeline", "/api/status", "/api/forecasts",
                     "/privacy", "/api/events", "/static/dashboard.js"):
            async with s.get(dash.base_url + path) as r:
                body = await r.text()
                assert r.status == 401, path
                assert "hr" not in body and "wrist" not in body
                assert r.headers["Content-Security-Policy"] == CSP
        async with s.get(dash.base_url + "/?token=" + "x" * 43, allow_redirects=False) as r:
            assert r.status == 401
        forged = {"edgetwin_session": "abc.def"}
        async with s.get(dash.base_url + "/api/status", cookies=forged) as r:
            assert r.status == 401


async def test_token_sets_a_strict_cookie_and_is_stripped_from_the_url(
    served: tuple[Dashboard, TwinStore],
) -> None:
    dash, _ = served
    async with aiohttp.ClientSession(cookie_jar=_jar()) as s:
        async with s.get(dash.base_url + "/timeline?token=" + dash.token + "&range=3600",
                         allow_redirects=False) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/timeline?range=3600"
            cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie
            assert "Secure" not in cookie  # plain HTTP on loopback
        async with s.get(dash.base_url + "/api/status") as r:
            assert r.status == 200
            doc = await r.json()
            assert doc["daemon"]["running"] is False
            assert r.headers["Content-Security-Policy"] == CSP
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Referrer-Policy"] == "no-referrer"
            assert r.headers["X-Frame-Options"] == "DENY"


async def test_the_token_file_is_private_and_a_readable_one_is_refused(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path)
    path = tmp_path / "dashboard.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 43  # 32 bytes, urlsafe base64
    assert load_or_create_token(tmp_path) == token
    path.chmod(0o644)
    with pytest.raises(HomeError, match="readable by others"):
        load_or_create_token(tmp_path)


async def test_other_origins_and_hosts_are_refused(served: tuple[Dashboard, TwinStore]) -> None:
    dash, _ = served
    async with aiohttp.ClientSession(cookie_jar=_jar()) as s:
        await _login(dash, s)
        async with s.get(dash.base_url + "/api/status",
                         headers={"Origin": "https://evil.example"}) as r:
            assert r.status == 403
        async with s.get(dash.base_url + "/api/status",
                         headers={"Sec-Fetch-Site": "cross-site"}) as r:
            assert r.status == 403
        # DNS rebinding: a page on evil.example resolving to 127.0.0.1
        async with s.get(dash.base_url + "/api/status",
                         headers={"Host": f"evil.example:{dash.port}"}) as r:
            assert r.status == 421


async def test_consent_and_forget_need_the_csrf_token(
    served: tuple[Dashboard, TwinStore],
) -> None:
    dash, store = served
    async with aiohttp.ClientSession(cookie_jar=_jar()) as s:
        await _login(dash, s)
        csrf = await _csrf(dash, s)
        before = {c.metric: c.granted for c in list_consents(store)}
        assert before["hr_mean"] is True
        # no token, a wrong one, and the right one from another origin: all refused
        for headers in ({}, {"X-CSRF-Token": "0" * 43},
                        {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}):
            async with s.post(dash.base_url + "/api/consent/revoke",
                              json={"metric": "hr_mean"}, headers=headers) as r:
                assert r.status == 403
            async with s.post(dash.base_url + "/api/forget", json={"stream": "wrist"},
                              headers=headers) as r:
                assert r.status == 403
            async with s.post(dash.base_url + "/api/pair/remove", json={"name": "wrist"},
                              headers=headers) as r:
                assert r.status == 403
        assert {c.metric: c.granted for c in list_consents(store)} == before
        assert len(list(store.read_frames())) == N
        assert "wrist" in store.list_records("pairing")
        # with it: revoke, grant (audited, as the CLI does), remove the pairing, forget
        hdr = {"X-CSRF-Token": csrf}
        async with s.post(dash.base_url + "/api/consent/revoke", json={"metric": "hr_mean"},
                          headers=hdr) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["granted"] is False
        assert {c.metric: c.granted for c in list_consents(store)}["hr_mean"] is False
        async with s.post(dash.base_url + "/api/consent/grant",
                          json={"metric": "no_such_metric"}, headers=hdr) as r:
            assert r.status == 400
            assert "no_such_metric" in (await r.json())["error"]
        async with s.post(dash.base_url + "/api/pair/remove", json={"name": "wrist"},
                          headers=hdr) as r:
            assert r.status == 200
        assert "wrist" not in store.list_records("pairing")
        events = [e["event"] for e in store.audit_entries()]
        assert "pair_remove" in events
        async with s.post(dash.base_url + "/api/forget", json={"before": frame_t(N) + 1},
                          headers=hdr) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["frames_deleted"] >= 1
        assert list(store.read_frames()) == []


async def test_timeline_api_downsamples_and_keeps_gaps_markers_and_spans(
    served: tuple[Dashboard, TwinStore],
) -> None:
    dash, _ = served
    async with aiohttp.ClientSession(cookie_jar=_jar()) as s:
        await _login(dash, s)
        q = f"?from={frame_t(0)}&to={frame_t(N - 1)}&points=200&features=hr"
        async with s.get(dash.base_url + "/api/timeline" + q) as r:
            assert r.status == 200
            doc = await r.json()
    assert doc["frames"] == N
    assert doc["features"] == ["hr"]
    pts = doc["points"]
    assert len(pts["t"]) < N  # downsampled on the server
    for t, v in zip(pts["t"], pts["columns"]["hr"], strict=True):
        k = round((t - frame_t(0)) / 5.0)
        if GAP[0] <= k < GAP[1]:
            assert v is None
        else:
            assert v == hr_at(k)
    assert doc["markers"][0]["text"] == MARKER_TEXT
    assert doc["shading"]["hr"]["imputed"] == [[frame_t(300), frame_t(340)]]
    assert doc["shading"]["hr"]["low_quality"] == [[frame_t(1200), frame_t(1260)]]
    async with aiohttp.ClientSession(cookie_jar=_jar()) as s:
        await _login(dash, s)
        async with s.get(dash.base_url + "/api/timeline?from=10&to=5") as r:
            assert r.status == 400
            assert "must end after it starts" in (await r.json())["error"]


async def test_non_loopback_is_refused_without_tls_and_allow_remote(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="beyond loopback"):
        parse_config('[dashboard]\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match="beyond loopback"):
        parse_config('[dashboard]\nhost = "0.0.0.0"\nallow_remote = true\n')
    assert parse_config('[dashboard]\nhost = "::1"\n').dashboard.host == "::1"
    # even a settings object built around the validation never listens
    port = _free_port()
    home = tmp_path / "h"
    build_twin(home, frames=10)
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        bad = dataclasses.replace(DashboardConfig(), host="0.0.0.0", port=port, allow_remote=True)
        dash = Dashboard(home, StoreBackend(store, Config()), bad)
        with pytest.raises(DashboardRefused, match="beyond loopback"):
            await dash.start()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens


def test_cli_dashboard_prints_a_url_that_opens_the_stored_twin(tmp_path: Path) -> None:
    home = tmp_path / "home"
    build_twin(home, frames=50)
    pw = tmp_path / "pw"
    pw.write_text(PASS + "\n")
    pw.chmod(0o600)
    env = {**os.environ, "EDGETWIN_HOME": str(home), "EDGETWIN_PASSPHRASE_FILE": str(pw)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetwin", "dashboard", "--port", "0", "--duration", "60",
         "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        doc = json.loads(line)
        assert doc["served_by"] == "store"
        url = doc["url"]
        token = (home / "dashboard.token").read_text().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/?token=" + token)
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(url, timeout=30) as r:  # follows the redirect with the cookie
            html = r.read().decode()
            assert r.url.endswith("/")
        assert 'data-page="now"' in html
        assert "wrist" in html  # the paired sensor, from the stored twin
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()
    assert proc.returncode == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])




def test_aiohttp_is_imported_only_when_the_dashboard_is_enabled() -> None:
    code = (
        "import asyncio, sys, types\n"
        "import edgetwin.daemon.app, edgetwin.cli.daemon\n"
        "from edgetwin.config import parse_config\n"
        "from edgetwin.daemon.dashboard import dashboard_for\n"
        "d = types.SimpleNamespace(config=parse_config('[dashboard]\\nenabled = false\\n'))\n"
        "async def main():\n"
        "    async with dashboard_for(d) as dash:\n"
        "        assert dash is None\n"
        "asyncio.run(main())\n"
        "print('aiohttp' in sys.modules, 'edgetwin.web.app' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["False", "False"]


async def test_tls_serves_https_with_a_secure_cookie(tmp_path: Path) -> None:
    import datetime as dt
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    home = tmp_path / "h"
    build_twin(home, frames=10)
    settings = DashboardConfig(port=0, tls_cert=str(cert_file), tls_key=str(key_file))
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        dash = Dashboard(home, StoreBackend(store, Config()), settings)
        await dash.start()
        try:
            assert dash.url.startswith("https://127.0.0.1:")
            client_ctx = ssl.create_default_context(cafile=str(cert_file))
            client_ctx.check_hostname = False  # the certificate names an IP in its CN only
            async with aiohttp.ClientSession(cookie_jar=_jar()) as s:
                async with s.get(dash.url, allow_redirects=False, ssl=client_ctx) as r:
                    assert r.status == 303
                    assert "Secure" in r.headers["Set-Cookie"]
                async with s.get(dash.base_url + "/api/status", ssl=client_ctx) as r:
                    assert r.status == 200
                http_url = dash.base_url.replace("https://", "http://") + "/api/status"
                with pytest.raises(aiohttp.ClientError):
                    async with s.get(http_url) as r:
                        await r.read()
        finally:
            await dash.stop()
