"""A real gpsd fed by gpsfake (Debian's gpsd and gpsd-clients) on a private port.

gpsfake starts its own gpsd on ``-P PORT`` and writes the log's sentences to a
pty gpsd reads. It is run single-stepped (``-i``): each sentence waits for a
newline on its stdin, so a test connects its client first and then releases
the track (:meth:`GpsFake.release`); without that, sentences written before a
client watches are read by nobody.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

GPSFAKE = shutil.which("gpsfake")
GPSD = shutil.which("gpsd") or (os.path.exists("/usr/sbin/gpsd") and "/usr/sbin/gpsd") or None

needs_gpsd = pytest.mark.skipif(
    GPSFAKE is None or GPSD is None,
    reason="Debian's gpsd and gpsd-clients are not installed (scripts/bootstrap --dev)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GpsFake:
    """One gpsfake (and its gpsd) in its own process group; ``stop`` ends both."""

    def __init__(self, log: Path, port: int, *, cycle_s: float = 0.01) -> None:
        self.log = log
        self.port = port
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        self.sentences = len(lines)
        self.warmup = sum(1 for line in lines if line.startswith("$GPRMC") and ",V," in line)
        env = {**os.environ, "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin"}
        self.proc = subprocess.Popen(
            [str(GPSFAKE), "-i", "-1", "-q", "-c", str(cycle_s), "-P", str(port), str(log)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, env=env,
        )
        self._released = False
        self._wait_listening()

    def release(self, n: int | None = None, *, settle_s: float = 1.0) -> None:
        """Let ``n`` (default: all) sentences go to gpsd: the void warm-up sentences first,
        then (after ``settle_s``, while gpsd syncs to the fake receiver) the rest."""
        assert self.proc.stdin is not None
        total = self.sentences if n is None else n
        if self.warmup and not self._released:
            self.proc.stdin.write(b"\n" * self.warmup)
            self.proc.stdin.flush()
            time.sleep(settle_s)
            total -= self.warmup
        self._released = True
        self.proc.stdin.write(b"\n" * max(total, 0))
        self.proc.stdin.flush()

    def stop(self) -> None:
        """End gpsfake and its gpsd (the whole process group) and remove gpsfake's socket."""
        with contextlib.suppress(ProcessLookupError):  # gpsfake ignores SIGTERM at its prompt
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stderr):
            if stream is not None:
                stream.close()
        Path(f"/tmp/gpsfake-{self.proc.pid}.sock").unlink(missing_ok=True)

    def _wait_listening(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"gpsfake exited early ({self.proc.returncode}): {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.settimeout(2.0)
                    s.recv(256)  # the VERSION banner: gpsd is up
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gpsd did not listen on port {self.port} within {timeout} s")
