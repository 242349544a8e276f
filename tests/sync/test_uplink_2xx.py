"""The HTTPS uplink against a plain (non-edgetwin) HTTPS endpoint: any 2xx is an acceptance."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from edgetwin.config import Config, SyncConfig
from edgetwin.privacy.consent import grant
from edgetwin.sync import outbox
from edgetwin.sync.service import drain_outbox, release_one
from edgetwin.sync.signing import DeviceKey
from edgetwin.sync.target import parse_target, save_target
from edgetwin.sync.uplink import HttpsUplink, UplinkUnavailable
from tests.sync.helpers import DAY, T0, Tls, make_release, make_twin, write_days

CFG = SyncConfig(timeout_s=5)


class _Plain(BaseHTTPRequestHandler):
    """Answers every POST with a fixed status and body, as a generic ingest endpoint does."""

    status = 200
    body = b"{}"
    bodies: list[bytes]

    def do_POST(self) -> None:
        type(self).bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(self.status)
        if self.status != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.status != 204:
            self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def plain_https(tls: Tls) -> Iterator[tuple[int, type[_Plain]]]:
    handler = type("H", (_Plain,), {"bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls.cert, tls.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, b"{}", "stored"),
        (204, b"", "stored"),
        (201, b"<html>created</html>", "stored"),
        (202, b'{"accepted": true}', "stored"),
        (200, b'{"status": "duplicate"}', "duplicate"),  # a receipt without the id still counts
    ],
)
def test_any_2xx_from_a_plain_https_endpoint_is_accepted(
    plain_https: tuple[int, type[_Plain]], tls: Tls, device_key: DeviceKey,
    status: int, body: bytes, outcome: str,
) -> None:
    port, handler = plain_https
    handler.status, handler.body = status, body
    target = parse_target(url=f"https://127.0.0.1:{port}/ingest", ca_file=str(tls.ca))
    release = make_release()
    assert HttpsUplink(target, device_key, CFG).send(release) == outcome
    (sent,) = handler.bodies
    assert json.loads(json.loads(sent)["payload"])["id"] == release.id


def test_a_receipt_naming_another_release_is_still_retried(
    plain_https: tuple[int, type[_Plain]], tls: Tls, device_key: DeviceKey,
) -> None:
    port, handler = plain_https
    handler.body = b'{"status": "stored", "id": "someone-else"}'
    target = parse_target(url=f"https://127.0.0.1:{port}/", ca_file=str(tls.ca))
    with pytest.raises(UplinkUnavailable, match="does not match"):
        HttpsUplink(target, device_key, CFG).send(make_release())


def test_outbox_drains_to_a_plain_https_endpoint_answering_200_empty_object(
    plain_https: tuple[int, type[_Plain]], tls: Tls, tmp_path: Path,
) -> None:
    """Today's bug: ``200 {}`` was 'no readable receipt', so the release was retried forever."""
    port, handler = plain_https
    twin: Any = make_twin(tmp_path / "home")
    try:
        write_days(twin, T0, 2)
        grant(twin, "hr_mean", "day", T0)
        now = T0 + 2 * DAY + 3600
        config = Config(sync=SyncConfig(timeout_s=5))
        release_one(twin, config, "hr_mean", "day", T0, 72.0, now)
        save_target(twin, parse_target(url=f"https://127.0.0.1:{port}/", ca_file=str(tls.ca)))
        report = drain_outbox(twin, config, now)
        assert report.errors == [] and report.sent == 1 and report.retry_later == 0
        assert [e.state for e in outbox.entries(twin)] == ["sent"]
        assert drain_outbox(twin, config, now + DAY, retry_now=True).sent == 0  # nothing left
        assert len(handler.bodies) == 1
    finally:
        twin.close()
