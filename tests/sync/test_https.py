"""HTTPS uplink against the real collector: TLS verification, loopback rule, bad answers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgetwin.config import SyncConfig
from edgetwin.errors import UsageError
from edgetwin.sync.signing import DeviceKey
from edgetwin.sync.target import parse_target
from edgetwin.sync.uplink import HttpsUplink, UplinkRejected, UplinkUnavailable
from tests.sync.helpers import RunningCollector, Tls, free_port, make_release, start_collector

CFG = SyncConfig(timeout_s=5)


def test_plain_http_needs_loopback_and_the_flag() -> None:
    with pytest.raises(UsageError, match="only to loopback and only when asked"):
        parse_target(url="http://127.0.0.1:9/")
    with pytest.raises(UsageError, match="unencrypted over the network"):
        parse_target(url="http://collector.example.org/", allow_insecure_loopback=True)
    with pytest.raises(UsageError, match="unencrypted"):
        parse_target(url="http://10.0.0.5/", allow_insecure_loopback=True)
    with pytest.raises(UsageError, match="scheme"):
        parse_target(url="ftp://127.0.0.1/")
    with pytest.raises(UsageError, match="credentials"):
        parse_target(url="https://u:p@example.org/")
    assert parse_target(url="http://[::1]:8/", allow_insecure_loopback=True).host == "::1"
    assert parse_target(url="https://example.org/up").path == "/up"


def test_https_with_a_custom_ca(tmp_path: Path, tls: Tls, device_key: DeviceKey) -> None:
    running = start_collector(tmp_path / "c.db", tls=tls)
    running.collector.enroll(device_key.public_b64)
    try:
        target = parse_target(url=f"https://127.0.0.1:{running.port}/v1/releases",
                              ca_file=tls.ca)
        up = HttpsUplink(target, device_key, CFG)
        release = make_release()
        assert up.send(release) == "stored"
        assert up.send(release) == "duplicate"
        assert running.collector.release_ids() == [release.id]
        assert {t for _, t in running.received} == {"https"}
    finally:
        running.stop()
        running.collector.close()


@pytest.mark.parametrize("which", ["wrong CA", "system CAs"])
def test_a_wrong_certificate_sends_nothing(
    tmp_path: Path, tls: Tls, device_key: DeviceKey, which: str
) -> None:
    running = start_collector(tmp_path / "c.db", tls=tls)
    running.collector.enroll(device_key.public_b64)
    try:
        ca = tls.wrong_ca if which == "wrong CA" else None
        target = parse_target(url=f"https://127.0.0.1:{running.port}/", ca_file=ca)
        with pytest.raises(UplinkUnavailable, match="TLS certificate not trusted") as err:
            HttpsUplink(target, device_key, CFG).send(make_release())
        assert "--ca" in str(err.value)
        assert running.received == []
    finally:
        running.stop()
        running.collector.close()


class _Misbehaving(BaseHTTPRequestHandler):
    status = 500
    body = b""
    bodies: list[bytes]

    def do_POST(self) -> None:
        n = int(self.headers["Content-Length"])
        type(self).bodies.append(self.rfile.read(n))
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def misbehaving() -> Iterator[tuple[int, type[_Misbehaving]]]:
    handler = type("H", (_Misbehaving,), {"bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "error", "match"),
    [
        (500, b"", UplinkUnavailable, "answered 500"),
        (503, b'{"error": "maintenance"}', UplinkUnavailable, "503: maintenance"),
        (429, b"", UplinkUnavailable, "429"),
        (200, b'{"status": "stored", "id": "someone-else"}', UplinkUnavailable, "does not match"),
        (302, b"", UplinkUnavailable, "unexpected HTTP status 302"),
        (400, b'{"error": "bad \\u001b[31mthing"}', UplinkRejected, "400: bad \\[31mthing"),
        (403, b'{"error": "device not enrolled"}', UplinkRejected, "403: device not enrolled"),
    ],
)
def test_bad_answers_are_classified(
    misbehaving: tuple[int, type[_Misbehaving]], device_key: DeviceKey,
    status: int, body: bytes, error: type[Exception], match: str,
) -> None:
    port, handler = misbehaving
    handler.status, handler.body = status, body
    target = parse_target(url=f"http://127.0.0.1:{port}/", allow_insecure_loopback=True)
    with pytest.raises(error, match=match):
        HttpsUplink(target, device_key, CFG).send(make_release())
    assert len(handler.bodies) == 1


def test_nobody_listening(device_key: DeviceKey) -> None:
    target = parse_target(url=f"http://127.0.0.1:{free_port()}/", allow_insecure_loopback=True)
    with pytest.raises(UplinkUnavailable, match="unreachable"):
        HttpsUplink(target, device_key, CFG).send(make_release())


def test_collector_answers_403_for_an_unenrolled_device(
    collector: RunningCollector,
) -> None:
    stranger = DeviceKey.generate()
    target = parse_target(url=f"http://127.0.0.1:{collector.port}/",
                          allow_insecure_loopback=True)
    with pytest.raises(UplinkRejected, match=r"403: device .* is not enrolled"):
        HttpsUplink(target, stranger, CFG).send(make_release())
    assert collector.collector.release_ids() == []
