"""The control socket under hostile requests: a JSON error reply every time, and a forget that
must prove the twin's secret (a same-user process without it destroys nothing)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgetwin.config import Config, DaemonConfig
from edgetwin.daemon import control
from edgetwin.daemon.control import MAX_REQUEST, ControlServer
from edgetwin.daemon.supervisor import Daemon
from edgetwin.errors import DaemonNotRunning
from edgetwin.store import KdfParams, Secret, TwinStore
from tests.store.helpers import PASS, batch

CFG = Config(daemon=DaemonConfig(flush_interval_s=0.05))
KEY = b"k" * 32


def _raw(home: Path, data: bytes) -> dict[str, Any]:
    """Send raw bytes as a client would; the one JSON line the server answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(home / "control.sock"))
        # the server may answer and hang up before it has read everything
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    assert buf.endswith(b"\n"), buf
    reply = json.loads(buf)
    assert isinstance(reply, dict)
    return reply


class _Recorder:
    """A handler that records what reached it and fails on request."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, request: dict[str, Any], _writer: Any) -> dict[str, Any]:
        self.seen.append(request)
        if request.get("cmd") == "boom":
            raise RuntimeError("handler bug")
        return {"ok": True, "echo": request.get("cmd")}


def _prove(message: bytes) -> bytes:
    import hmac

    return hmac.new(KEY, message, "sha256").digest()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Path, _Recorder]]:
    home = tmp_path / "home"
    home.mkdir()
    handler = _Recorder()
    srv = ControlServer(home, handler, prover=_prove)
    await srv.start()
    yield home, handler
    await srv.close()


async def _ask(home: Path, data: bytes) -> dict[str, Any]:
    return await asyncio.to_thread(_raw, home, data)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b'{"cmd": "status", "pad": "' + b"x" * 5000 + b'"}\n', f"longer than {MAX_REQUEST}"),
        (b'{"cmd": "status", "pad": "' + b"x" * 200_000 + b'"}\n', f"longer than {MAX_REQUEST}"),
        (b'{"cmd": "forget", "before": 1e999}\n', "number 1e999 overflows a float"),
        (b'{"cmd": "predictions", "last": ' + b"9" * 4000 + b"}\n", "number of 4000 characters"),
        (b'{"cmd": "forget", "before": NaN}\n', "NaN is not a number"),
        (b'{"cmd": "forget", "before": -Infinity}\n', "-Infinity is not a number"),
        (b"\xff\xfe not json\n", "bad request"),
        (b"[1, 2]\n", "a request is a JSON object"),
        (b"[" * 3000 + b"\n", "bad request"),
    ],
    ids=["5KB line", "200KB line", "float overflow", "int overflow", "NaN", "-Infinity",
         "not UTF-8", "not an object", "deep nesting"],
)
async def test_hostile_request_gets_a_json_error_and_never_reaches_the_handler(
    server: tuple[Path, _Recorder], data: bytes, match: str
) -> None:
    home, handler = server
    reply = await _ask(home, data)
    assert match in reply["error"]
    assert handler.seen == []
    # and the server still answers the next client
    assert (await _ask(home, b'{"cmd": "ping"}\n')) == {"ok": True, "echo": "ping"}


async def test_a_failing_handler_gets_an_error_reply_and_the_server_keeps_serving(
    server: tuple[Path, _Recorder],
) -> None:
    home, _ = server
    reply = await _ask(home, b'{"cmd": "boom"}\n')
    assert reply == {"error": "internal error: RuntimeError: handler bug"}
    assert (await _ask(home, b'{"cmd": "ping"}\n'))["ok"] is True


async def test_forget_without_a_valid_proof_is_refused_before_the_handler(
    server: tuple[Path, _Recorder],
) -> None:
    home, handler = server
    bare = await _ask(home, b'{"cmd": "forget", "all": true}\n')
    assert bare["error"].startswith("unproven: forget needs proof of the twin's secret")
    nonce = (await _ask(home, b'{"cmd": "nonce"}\n'))["nonce"]
    forged = {"cmd": "forget", "all": True, "nonce": nonce, "proof": "00" * 32}
    assert "does not match" in (await _ask(home, json.dumps(forged).encode() + b"\n"))["error"]
    # that nonce is spent, even by a wrong proof: a right one over it is refused too
    signed = {"cmd": "forget", "all": True, "nonce": nonce}
    right = {**signed, "proof": _prove(control.proof_message(bytes.fromhex(nonce), signed)).hex()}
    assert "used or expired nonce" in (await _ask(home, json.dumps(right).encode() + b"\n"))[
        "error"]
    assert handler.seen == []
    # a proof over another request (stream 'b' signed, stream 'a' sent) does not carry over
    nonce = (await _ask(home, b'{"cmd": "nonce"}\n'))["nonce"]
    other = {"cmd": "forget", "stream": "b", "nonce": nonce}
    sent = {"cmd": "forget", "stream": "a", "nonce": nonce,
            "proof": _prove(control.proof_message(bytes.fromhex(nonce), other)).hex()}
    assert "does not match" in (await _ask(home, json.dumps(sent).encode() + b"\n"))["error"]
    assert handler.seen == []
    reply = await asyncio.to_thread(
        control.request_proven, home, {"cmd": "forget", "stream": "a"}, _prove)
    assert reply == {"ok": True, "echo": "forget"}
    assert [r["stream"] for r in handler.seen] == ["a"]


async def test_forget_over_the_socket_needs_the_twins_secret_not_just_the_same_user(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    store = TwinStore.create(home, Secret.passphrase(PASS), kdf=KdfParams.for_tests())
    store.append_samples(batch("hr", 1_700_000_000.0, 30))
    store.commit()
    other = TwinStore.create(tmp_path / "other", Secret.passphrase(PASS),
                             kdf=KdfParams.for_tests())
    daemon = Daemon(home, CFG, store, [])
    task = asyncio.create_task(daemon.run())
    try:
        while not (home / "control.sock").exists():
            await asyncio.sleep(0.01)
        # any same-user process: the raw command the CLI used to send
        raw = await _ask(home, b'{"cmd": "forget", "stream": "hr", "before": null, "all": false}\n')
        assert raw["error"].startswith("unproven")
        # a process holding another twin's secret
        with pytest.raises(DaemonNotRunning, match="does not match"):
            await asyncio.to_thread(control.request_proven, home,
                                    {"cmd": "forget", "stream": "hr"}, other.control_proof)
        assert [s.name for s in store.streams()] == ["hr"]
        # the CLI's way: its own handle on this twin, unlocked with the passphrase
        cli_handle = TwinStore.open(home, Secret.passphrase(PASS))
        try:
            reply = await asyncio.to_thread(
                control.request_proven, home,
                {"cmd": "forget", "stream": "hr", "before": None, "all": False},
                cli_handle.control_proof)
        finally:
            cli_handle.close()
        assert reply["forget"]["samples_deleted"] == 30
        assert [s.name for s in store.streams()] == []
    finally:
        daemon.stop()
        await task
        store.close()
        other.close()
