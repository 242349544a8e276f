"""The control socket: ``control.sock`` in the twin home, owner-only.

Protocol: one JSON object per line each way. Requests are
``{"cmd": "status"}``, ``{"cmd": "predictions", "last": N}`` and
``{"cmd": "follow"}`` (a stream of prediction lines until the client hangs
up). Every connection's peer uid is checked with ``SO_PEERCRED``: anyone but
the daemon's own user is refused before a byte is read. The socket file is
created under a 0177 umask and chmod 0600 as a second fence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from edgetwin.errors import DaemonNotRunning, HomeError, MalformedInput

_LOGGER = logging.getLogger(__name__)

SOCKET_FILE = "control.sock"
_MAX_REQUEST = 4096

Handler = Callable[[dict[str, Any], asyncio.StreamWriter], Awaitable[dict[str, Any] | None]]


def socket_path(home: Path) -> Path:
    return home / SOCKET_FILE


class ControlServer:
    """Serves requests on the control socket with a single handler coroutine."""

    def __init__(self, home: Path, handler: Handler) -> None:
        self.path = socket_path(home)
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None
        self.refused = 0

    async def start(self) -> None:
        _remove_stale_socket(self.path)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)
        self.path.chmod(0o600)

    async def close(self) -> None:
        if self._server is None:
            return  # never bound: whatever is at the path is not ours
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock)
            if uid != os.getuid():
                self.refused += 1
                _LOGGER.warning("control socket: refused a client with uid %s", uid)
                return
            line = await reader.readline()
            if len(line) > _MAX_REQUEST:
                return
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise TypeError("request must be an object")
            except (ValueError, TypeError) as exc:
                await _send(writer, {"error": f"bad request: {exc}"})
                return
            reply = await self._handler(request, writer)
            if reply is not None:
                await _send(writer, reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process on the other end of a Unix socket (Linux SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def request(home: Path, payload: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to the running daemon and return its reply."""
    with _connect(home, timeout) as sock:
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = _read_line(sock)
    if not data:
        raise DaemonNotRunning(f"the daemon on {home} closed the connection without a reply")
    try:
        reply = json.loads(data)
    except ValueError as exc:
        raise MalformedInput(f"daemon on {home} sent a malformed reply") from exc
    if not isinstance(reply, dict):
        raise MalformedInput(f"daemon on {home} sent a malformed reply")
    if "error" in reply:
        raise DaemonNotRunning(f"the daemon refused the request: {reply['error']}")
    return reply


def follow(home: Path) -> Any:
    """Yield each JSON line the daemon streams for ``{"cmd": "follow"}``."""
    sock = _connect(home, timeout=None)
    with sock:
        sock.sendall(b'{"cmd": "follow"}\n')
        buf = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)


def daemon_running(home: Path) -> bool:
    """Whether a daemon answers on this home's control socket."""
    try:
        request(home, {"cmd": "ping"}, timeout=2.0)
    except DaemonNotRunning:
        return False
    return True


# -- private helpers ---------------------------------------------------------


def _connect(home: Path, timeout: float | None) -> socket.socket:
    path = socket_path(home)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise DaemonNotRunning(
            f"no daemon runs on {home}", hint="start it with 'edgetwin daemon run'"
        ) from exc
    except PermissionError as exc:
        sock.close()
        raise HomeError(
            f"{path} belongs to another user", hint="run edgetwin as the twin's owner"
        ) from exc
    except OSError as exc:
        sock.close()
        raise DaemonNotRunning(f"cannot reach the daemon on {home}: {exc.strerror}") from exc
    return sock


def _read_line(sock: socket.socket) -> bytes:
    buf = b""
    while b"\n" not in buf:
        try:
            chunk = sock.recv(65536)
        except TimeoutError as exc:
            raise DaemonNotRunning("the daemon did not answer in time") from exc
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0]


async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj, default=_default).encode() + b"\n")
    await writer.drain()


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(type(obj).__name__)


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a crashed daemon; the caller already holds the lock."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_socket():
        raise HomeError(
            f"{path} exists and is not a socket", hint="move it away; edgetwin will not delete it"
        )
    path.unlink()
