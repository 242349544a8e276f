"""The control socket: ``control.sock`` in the twin home, owner-only.

Protocol: one JSON object per line each way. Requests are
``{"cmd": "status"}``, ``{"cmd": "predictions", "last": N}`` and
``{"cmd": "follow"}`` (a stream of prediction lines until the client hangs
up). Every connection's peer uid is checked with ``SO_PEERCRED``: anyone but
the daemon's own user is refused before a byte is read. The socket file is
created under a 0177 umask and chmod 0600 as a second fence.

A request that cannot be read (longer than ``MAX_REQUEST`` bytes, not JSON,
NaN or a number out of range) and a handler that fails get a JSON
``{"error": ...}`` reply; nothing escapes the connection callback.

Destructive commands (``forget``) must also prove the twin's secret, which a
same-user process does not have: the client asks for a nonce
(``{"cmd": "nonce"}``, single use, ``NONCE_TTL_S``), then sends the command
with ``"nonce"`` and ``"proof"``, an HMAC-SHA256 of :func:`proof_message`
under a key derived from the unlocked master key (``TwinStore.control_proof``);
the daemon recomputes it with its own unlocked store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from edgetwin import untrusted_json
from edgetwin.errors import DaemonNotRunning, HomeError, MalformedInput

_LOGGER = logging.getLogger(__name__)

SOCKET_FILE = "control.sock"
MAX_REQUEST = 4096  # bytes of one request line, newline included
PROVEN_COMMANDS = frozenset({"forget"})
NONCE_TTL_S = 60.0
_MAX_NONCES = 32
_READ_TIMEOUT_S = 10.0
_MAX_INT_DIGITS = 18  # every number a request carries fits in an int64 / a float
_MAX_DEPTH = 16  # requests are flat objects; a few levels of lists at most

Handler = Callable[[dict[str, Any], asyncio.StreamWriter], Awaitable[dict[str, Any] | None]]
# HMAC-SHA256 of a message under the twin's control-proof key.
Prover = Callable[[bytes], bytes]


def socket_path(home: Path) -> Path:
    return home / SOCKET_FILE


class ControlServer:
    """Serves requests on the control socket with a single handler coroutine.

    ``prover`` computes the proof a destructive command must carry; without one,
    those commands are refused.
    """

    def __init__(self, home: Path, handler: Handler, prover: Prover | None = None) -> None:
        self.path = socket_path(home)
        self._handler = handler
        self._prover = prover
        self._nonces: dict[bytes, float] = {}
        self._server: asyncio.AbstractServer | None = None
        self.refused = 0

    async def start(self) -> None:
        _remove_stale_socket(self.path)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
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
            try:
                reply = await self._answer(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                raise
            except Exception as exc:  # a bug in a handler: say so, keep serving
                _LOGGER.exception("control socket: the request failed")
                reply = _error("internal error", f"{type(exc).__name__}: {exc}")
            if reply is not None:
                await _send(writer, reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # nothing escapes the connection callback
            _LOGGER.exception("control socket: the reply failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, Any] | None:
        """The reply to one request line, or None when the handler streamed its own."""
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):  # keeps a cancel (3.11's wait_for not)
                line = await reader.readline()
        except ValueError:  # the stream's limit: no newline within MAX_REQUEST bytes
            return _error("bad request", f"longer than {MAX_REQUEST} bytes")
        except TimeoutError:
            return _error("bad request", f"no complete line within {_READ_TIMEOUT_S:g} s")
        if len(line) > MAX_REQUEST:
            return _error("bad request", f"longer than {MAX_REQUEST} bytes")
        try:
            request = parse_request(line)
        except ValueError as exc:
            return _error("bad request", str(exc))
        cmd = request.get("cmd")
        if cmd == "nonce":
            return {"nonce": self._issue_nonce().hex()}
        if cmd in PROVEN_COMMANDS:
            problem = self._check_proof(request)
            if problem is not None:
                _LOGGER.warning("control socket: refused %r: %s", cmd, problem)
                return _error("unproven", f"{cmd} needs proof of the twin's secret: {problem}")
        return await self._handler(request, writer)

    def _issue_nonce(self) -> bytes:
        now = time.monotonic()
        self._nonces = {n: exp for n, exp in self._nonces.items() if exp > now}
        while len(self._nonces) >= _MAX_NONCES:  # oldest first: dicts keep insertion order
            del self._nonces[next(iter(self._nonces))]
        nonce = os.urandom(32)
        self._nonces[nonce] = now + NONCE_TTL_S
        return nonce

    def _check_proof(self, request: dict[str, Any]) -> str | None:
        """None if the request carries a valid proof over a fresh nonce; else what is wrong."""
        if self._prover is None:
            return "this daemon cannot check proofs"
        nonce_hex, proof_hex = request.get("nonce"), request.get("proof")
        if not isinstance(nonce_hex, str) or not isinstance(proof_hex, str):
            return "no nonce and proof (ask for {\"cmd\": \"nonce\"} first)"
        try:
            nonce, proof = bytes.fromhex(nonce_hex), bytes.fromhex(proof_hex)
        except ValueError:
            return "nonce or proof is not hex"
        expiry = self._nonces.pop(nonce, None)  # single use, right or wrong
        if expiry is None or expiry < time.monotonic():
            return "unknown, used or expired nonce"
        if not hmac.compare_digest(proof, self._prover(proof_message(nonce, request))):
            return "the proof does not match"
        return None


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line as a JSON object; ValueError for anything else, NaN and huge
    numbers included (a float('inf') or a 4000-digit int would reach the handlers)."""
    request = untrusted_json.loads(line, max_depth=_MAX_DEPTH, max_int_digits=_MAX_INT_DIGITS)
    if not isinstance(request, dict):
        raise ValueError("a request is a JSON object")
    return request


def proof_message(nonce: bytes, request: dict[str, Any]) -> bytes:
    """What the proof of a destructive request signs: the nonce and the request itself."""
    body = {k: v for k, v in request.items() if k != "proof"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return b"edgetwin control proof v1\x00" + nonce + b"\x00" + canonical.encode()


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


def request_proven(
    home: Path, payload: dict[str, Any], prover: Prover, *, timeout: float = 5.0
) -> dict[str, Any]:
    """Send a destructive request with its proof over a fresh daemon nonce."""
    nonce_hex = request(home, {"cmd": "nonce"}, timeout=timeout).get("nonce")
    if not isinstance(nonce_hex, str):
        raise MalformedInput(f"daemon on {home} sent no nonce")
    signed = {**payload, "nonce": nonce_hex}
    proof = prover(proof_message(bytes.fromhex(nonce_hex), signed))
    return request(home, {**signed, "proof": proof.hex()}, timeout=timeout)


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


def _error(kind: str, detail: str) -> dict[str, Any]:
    return {"error": f"{kind}: {detail}"}


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
