"""Hostile clients against the real collector: each gets a 4xx (or 408 and a close), is counted
as a refusal, and never stops the collector from serving an honest device meanwhile."""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgetwin.config import SyncConfig
from edgetwin.sync.collector import Collector, CollectorRefusal
from edgetwin.sync.collector.server import HttpLimits
from edgetwin.sync.payload import encode_envelope
from edgetwin.sync.signing import DeviceKey
from edgetwin.sync.target import parse_target
from edgetwin.sync.uplink import HttpsUplink
from tests.sync.helpers import RunningCollector, Tls, make_release, start_collector

CFG = SyncConfig(timeout_s=20)
# Short timeouts so the tests end soon; nothing below asserts how long anything took.
FAST = HttpLimits(header_timeout_s=1.0, body_timeout_s=1.0, handshake_timeout_s=1.0)
TOKEN = "s3cret-token-for-tests"


def eventually(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def running(tmp_path: Path, device_key: DeviceKey) -> Iterator[RunningCollector]:
    r = start_collector(tmp_path / "c.db", limits=FAST, token=TOKEN)
    r.collector.enroll(device_key.public_b64)
    yield r
    r.stop()
    r.collector.close()


def honest_upload(port: int, key: DeviceKey, *, tls: Tls | None = None) -> str:
    """A real device's upload through the real uplink; returns the receipt status."""
    scheme = "https" if tls else "http"
    target = parse_target(url=f"{scheme}://127.0.0.1:{port}/v1/releases",
                          ca_file=tls.ca if tls else None, allow_insecure_loopback=True)
    return HttpsUplink(target, key, CFG).send(make_release(float(70 + time.time() % 20)))


def post(port: int, body: bytes, headers: dict[str, str] | None = None,
         path: str = "/v1/releases", method: str = "POST") -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else {}
    finally:
        conn.close()


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as a close)."""
    sock.settimeout(30)
    out = b""
    try:
        while chunk := sock.recv(4096):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def refused(r: RunningCollector, status: int) -> int:
    return r.collector.refusals().get(f"refused {status}", 0)


# -- the four cases of the issue -------------------------------------------------


def test_an_idle_tls_client_does_not_stop_uploads_and_is_closed(
    tmp_path: Path, tls: Tls, device_key: DeviceKey
) -> None:
    r = start_collector(tmp_path / "c.db", tls=tls, limits=FAST)
    r.collector.enroll(device_key.public_b64)
    idle = socket.create_connection(("127.0.0.1", r.port))  # TCP only: never says hello
    # A client that finishes the handshake but sends no request.
    ctx = ssl.create_default_context(cafile=str(tls.ca))
    silent = ctx.wrap_socket(socket.create_connection(("127.0.0.1", r.port)),
                             server_hostname="127.0.0.1")
    try:
        # The old collector handshook inside accept(): this upload waited for the idle client.
        assert honest_upload(r.port, device_key, tls=tls) == "stored"
        assert read_all(idle) == b""  # closed: there is no TLS session to answer in
        answer = read_all(silent)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        eventually(lambda: refused(r, 408) >= 2, "both idle TLS clients counted as refusals")
        assert honest_upload(r.port, device_key, tls=tls) == "stored"
        assert r.collector.counts()["releases"] == 2
    finally:
        idle.close()
        silent.close()
        r.stop()
        r.collector.close()


def test_an_idle_connection_flood_is_answered_408_while_uploads_are_served(
    tmp_path: Path, device_key: DeviceKey
) -> None:
    limits = HttpLimits(max_connections=64, header_timeout_s=1.0, body_timeout_s=1.0)
    r = start_collector(tmp_path / "c.db", limits=limits)
    r.collector.enroll(device_key.public_b64)
    flood = [socket.create_connection(("127.0.0.1", r.port)) for _ in range(300)]
    try:
        # 300 idle connections are over the limit of 64: the newest honest one still gets in
        # (the longest-idle connection makes room) and is served.
        assert honest_upload(r.port, device_key) == "stored"
        assert r.server.connections <= limits.max_connections
        answers = [read_all(s) for s in flood]
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), \
            sorted({a[:40] for a in answers})
        eventually(lambda: refused(r, 408) >= 300, "every flood connection counted")
        assert honest_upload(r.port, device_key) == "stored"
    finally:
        for s in flood:
            s.close()
        r.stop()
        r.collector.close()


def test_handshakes_count_against_the_connection_limit(
    tmp_path: Path, tls: Tls, device_key: DeviceKey
) -> None:
    # 120 TCP clients that never start TLS against a limit of 32: each would hold TLS state
    # until its handshake timed out; instead the oldest make room and honest devices get in.
    limits = HttpLimits(max_connections=32, handshake_timeout_s=300.0, header_timeout_s=300.0)
    r = start_collector(tmp_path / "c.db", tls=tls, limits=limits)
    r.collector.enroll(device_key.public_b64)
    flood = [socket.create_connection(("127.0.0.1", r.port)) for _ in range(120)]
    try:
        assert honest_upload(r.port, device_key, tls=tls) == "stored"
        # The oldest were closed to make room (their handshake timeout is far away) ...
        assert all(read_all(s) == b"" for s in flood[:80])
        eventually(lambda: refused(r, 408) >= 80, "the evicted handshakes counted")
        # ... while the newest still hold their places: the limit counted them.
        readable, _, _ = select.select(flood[-20:], [], [], 0)
        assert readable == []
        assert r.server.connections <= limits.max_connections
        eventually(lambda: r.server.connections == limits.max_connections - 1,
                   "the newest flood connections counted, the honest one gone")
        # A client that does not trust the certificate is a refused handshake too.
        bad = ssl.create_default_context(cafile=str(tls.wrong_ca))
        with pytest.raises(ssl.SSLCertVerificationError), \
                socket.create_connection(("127.0.0.1", r.port)) as raw:
            bad.wrap_socket(raw, server_hostname="127.0.0.1")
        eventually(lambda: refused(r, 400) == 1, "the failed handshake counted")
    finally:
        for s in flood:
            s.close()
        r.stop()
        r.collector.close()


def test_json_nested_8000_deep_is_refused_400_not_a_traceback(
    running: RunningCollector, device_key: DeviceKey
) -> None:
    deep = b"[" * 8000 + b"]" * 8000
    status, doc = post(running.port, deep, {"Content-Type": "application/json"})
    assert status == 400 and "nested deeper than" in str(doc["error"])
    # The same inside the signed payload string, where the old code parsed it a second time.
    env = json.loads(encode_envelope(make_release(), device_key, int(time.time() * 1000)))
    env["payload"] = "[" * 6000 + "]" * 6000
    status, doc = post(running.port, json.dumps(env).encode())
    assert status == 400 and "nested deeper than" in str(doc["error"])
    assert refused(running, 400) == 2
    assert honest_upload(running.port, device_key) == "stored"


def test_an_integer_of_5000_digits_is_refused_400_not_a_traceback(
    running: RunningCollector, device_key: DeviceKey
) -> None:
    status, doc = post(running.port, b'{"v": ' + b"9" * 5000 + b"}")
    assert status == 400 and "number of 5000 characters" in str(doc["error"])
    # In a real envelope's send time: the old code died converting it to an int.
    body = encode_envelope(make_release(), device_key, int(time.time() * 1000))
    sent = json.loads(body)["sent_at_ms"]
    huge = body.replace(f'"sent_at_ms":{sent}'.encode(), b'"sent_at_ms":' + b"1" * 5000)
    status, doc = post(running.port, huge)
    assert status == 400 and "number of 5000 characters" in str(doc["error"])
    assert refused(running, 400) == 2
    assert honest_upload(running.port, device_key) == "stored"


def test_the_json_limits_hold_for_mqtt_too(tmp_path: Path, device_key: DeviceKey) -> None:
    # Collector.accept is what the MQTT subscriber calls for each message.
    c = Collector(tmp_path / "c.db")
    c.enroll(device_key.public_b64)
    for bad in (b"{" * 5000, b"[" + b"1" * 5000 + b"]", b'{"a":' + b"-1e" + b"7" * 80 + b"}"):
        with pytest.raises(CollectorRefusal) as err:
            c.accept(bad, "mqtt")
        assert err.value.http_status == 400
    # Brackets and digits inside strings are data, not structure.
    ok = encode_envelope(make_release(), device_key, int(time.time() * 1000))
    assert c.accept(ok, "mqtt").status == "stored"
    assert c.counts()["refused"] == 3
    c.close()


# -- the other limits ------------------------------------------------------------------


def test_slow_headers_and_slow_bodies_get_408(
    running: RunningCollector, device_key: DeviceKey
) -> None:
    slow_head = socket.create_connection(("127.0.0.1", running.port))
    slow_head.sendall(b"POST /v1/releases HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    slow_body = socket.create_connection(("127.0.0.1", running.port))
    slow_body.sendall(b"POST /v1/releases HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{")
    try:
        assert honest_upload(running.port, device_key) == "stored"
        assert read_all(slow_head).startswith(b"HTTP/1.1 408")
        answer = read_all(slow_body)
        assert answer.startswith(b"HTTP/1.1 408") and b"body not received" in answer
        eventually(lambda: refused(running, 408) >= 2, "both slow clients counted")
    finally:
        slow_head.close()
        slow_body.close()


def test_bodies_over_the_limit_get_413(running: RunningCollector, device_key: DeviceKey) -> None:
    status, doc = post(running.port, b"x" * 20_000)
    assert status == 413 and "over 16384 bytes" in str(doc["error"])
    # Chunked, with no Content-Length to refuse up front.
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    conn.request("POST", "/", body=iter([b"y" * 10_000, b"y" * 10_000]),
                 encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413
    conn.close()
    assert refused(running, 413) == 2
    assert honest_upload(running.port, device_key) == "stored"


def test_at_the_limit_with_every_connection_busy_a_new_one_gets_503(
    tmp_path: Path, device_key: DeviceKey
) -> None:
    limits = HttpLimits(max_connections=2, header_timeout_s=30.0, body_timeout_s=30.0)
    r = start_collector(tmp_path / "c.db", limits=limits)
    r.collector.enroll(device_key.public_b64)
    busy = []
    try:
        for _ in range(2):  # two uploads stuck in their bodies: busy, so not evictable
            s = socket.create_connection(("127.0.0.1", r.port))
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            busy.append(s)
        eventually(lambda: r.server.busy_connections == 2, "two busy connections")
        third = socket.create_connection(("127.0.0.1", r.port))
        answer = read_all(third)
        third.close()
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 5" in answer
        eventually(lambda: refused(r, 503) == 1, "the 503 counted")
    finally:
        for s in busy:
            s.close()
    # Once they are gone, uploads are served again.
    eventually(lambda: r.server.connections == 0, "the busy connections closed")
    assert honest_upload(r.port, device_key) == "stored"
    r.stop()
    r.collector.close()


def test_aggregates_need_the_bearer_token(
    running: RunningCollector, device_key: DeviceKey, tmp_path: Path
) -> None:
    assert honest_upload(running.port, device_key) == "stored"
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    conn.request("GET", "/v1/aggregates")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 401 and resp.getheader("WWW-Authenticate", "").startswith("Bearer")
    conn.close()
    status, _ = post(running.port, b"", {"Authorization": "Bearer wrong"}, "/v1/aggregates",
                     "GET")
    assert status == 401
    status, doc = post(running.port, b"", {"Authorization": f"Bearer {TOKEN}"},
                       "/v1/aggregates", "GET")
    assert status == 200
    (row,) = doc["aggregates"]  # type: ignore[misc]
    assert row["releases"] == 1
    assert refused(running, 401) == 2
    # Without a token configured, the endpoint is off for everyone.
    off = start_collector(tmp_path / "off.db")
    try:
        status, doc = post(off.port, b"", {"Authorization": f"Bearer {TOKEN}"},
                           "/v1/aggregates", "GET")
        assert status == 403 and "--token-file" in str(doc["error"])
    finally:
        off.stop()
        off.collector.close()


def test_the_cli_reads_the_token_from_a_file_and_refuses_an_empty_one(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    done = subprocess.run([sys.executable, "-m", "edgetwin", "collector", "--db",
                           str(tmp_path / "c.db"), "--listen", "127.0.0.1:0", "--token-file",
                           str(empty)], cwd=root, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2 and "is empty" in done.stderr
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "edgetwin", "--json", "collector", "--db",
                             str(tmp_path / "c.db"), "--listen", "127.0.0.1:0", "--token-file",
                             str(token)], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        doc = json.loads(proc.stdout.readline())
        assert doc["aggregates_auth"] is True
        port = int(doc["listening"].rsplit(":", 1)[1])
        status, body = post(port, b"", {"Authorization": f"Bearer {TOKEN}"}, "/v1/aggregates",
                            "GET")
        assert status == 200 and body == {"aggregates": []}
        assert post(port, b"", {}, "/v1/aggregates", "GET")[0] == 401
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_a_flood_faster_than_the_store_is_counted_in_memory_not_queued_without_bound(
    tmp_path: Path, device_key: DeviceKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from edgetwin.sync.collector import server as server_mod

    monkeypatch.setattr(server_mod, "_MAX_PENDING_RECORDS", 5)
    r = start_collector(tmp_path / "c.db", limits=FAST)
    r.collector.enroll(device_key.public_b64)
    stuck = threading.Event()
    record = r.collector.record_refusal

    def slow_record(transport: str, status: int, detail: str) -> None:
        stuck.wait(60)  # a store that cannot keep up
        record(transport, status, detail)

    monkeypatch.setattr(r.collector, "record_refusal", slow_record)
    flood = [socket.create_connection(("127.0.0.1", r.port)) for _ in range(20)]
    try:
        assert all(read_all(s).startswith(b"HTTP/1.1 408") for s in flood)
        status, doc = post(r.port, b"", {}, "/healthz", "GET")
        assert status == 200 and doc["unrecorded_refusals"] == 15
        stuck.set()
        eventually(lambda: refused(r, 408) == 5, "the queued refusals written")
    finally:
        stuck.set()
        for s in flood:
            s.close()
        r.stop()
        r.collector.close()
