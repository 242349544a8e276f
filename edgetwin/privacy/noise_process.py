"""OpenDP in a short-lived child process, so the daemon never maps it.

OpenDP's native library is ~17 MiB resident once loaded (the largest single
item in the daemon's RSS after onnxruntime), and the daemon needs it for a few
milliseconds a day. Inside :func:`opendp_out_of_process` the Laplace releases of
this thread, and the plans and noise of its secure-aggregation shares, are made by
a child (``python -m edgetwin.privacy.noise_process``) started on first use and
ended when the block ends; outside it, in the CLI and
tests, OpenDP runs in-process as before. Nothing else changes: the parent still
charges, mints and audits the release in one transaction, and the child draws
the noise with the same cached OpenDP measurement (a share's plan is the same
function of its parameters on either side).

The child is trusted code of this package talking over its stdin/stdout (JSON
lines); a child that dies or answers nonsense fails the release, which rolls
back its charge.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from edgetwin.errors import EdgetwinError

_LOCAL = threading.local()
# Generous: a Raspberry Pi starts Python and imports OpenDP in about two seconds.
_ANSWER_TIMEOUT_S = 60.0


class NoiseProcessError(EdgetwinError):
    """The OpenDP child process failed; the release did not happen."""


@dataclass(frozen=True)
class Noised:
    """What the child returns for one release."""

    value: float
    scale: float
    sensitivity: float


class NoiseProcess:
    """One child running OpenDP; requests are answered in order."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self.requests = 0

    def start(self) -> None:
        """Start the child now (before a transaction takes the store's lock)."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            _discard(self._proc)  # it died: a fresh one
            self._proc = None
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "edgetwin.privacy.noise_process"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            )

    def laplace(self, lower: float, upper: float, epsilon: float, summary: float) -> Noised:
        """One noisy release of ``summary`` by OpenDP's Laplace mechanism, in the child."""
        return _noised(self._ask({"lower": lower, "upper": upper, "epsilon": epsilon,
                                  "summary": summary}))

    def share_plan(self, **params: Any) -> dict[str, Any]:
        """The fields of ``discrete.plan_for(**params)``, computed in the child."""
        return self._ask({"op": "share_plan", **params})

    def share_noise(self, plan: dict[str, Any], value: int) -> int:
        """``value`` plus one discrete Gaussian share of ``plan``, drawn in the child."""
        answer = self._ask({"op": "share_noise", "plan": plan, "value": value})
        noisy = answer.get("value")
        if isinstance(noisy, bool) or not isinstance(noisy, int):
            raise NoiseProcessError(f"the OpenDP process answered {str(answer)[:80]}")
        return noisy

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request, one answer (a JSON object), in order; ValueError for the child's
        refusal, NoiseProcessError if the child fails."""
        with self._lock:
            self._start_locked()
            proc = self._proc
            assert proc is not None
            assert proc.stdin is not None
            assert proc.stdout is not None
            try:
                try:
                    proc.stdin.write(json.dumps(request) + "\n")
                    proc.stdin.flush()
                except OSError as exc:
                    raise NoiseProcessError(f"the OpenDP process is gone: {exc}",
                                            hint="the release is retried at the next sync") from exc
                line = _read_line(proc.stdout, _ANSWER_TIMEOUT_S)
                self.requests += 1
                return _parse_answer(line)
            except NoiseProcessError:
                # a late answer must never be taken for the next request's: a fresh child
                _discard(proc)
                self._proc = None
                raise

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            _discard(proc, grace_s=10.0)


def _discard(proc: subprocess.Popen[str], grace_s: float = 0.0) -> None:
    """End the child (end of input lets it exit on its own within ``grace_s``), close pipes."""
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(timeout=grace_s) if grace_s else proc.kill()
    except subprocess.TimeoutExpired:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _read_line(stream: IO[str], timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not result:
        raise NoiseProcessError(f"the OpenDP process did not answer within {timeout:g} s",
                                hint="the release is retried at the next sync")
    return result[0]


def _parse_answer(line: str) -> dict[str, Any]:
    if not line:
        raise NoiseProcessError("the OpenDP process exited without answering",
                                hint="run 'python -m edgetwin.privacy.noise_process' to see why")
    try:
        answer = json.loads(line)
    except json.JSONDecodeError as exc:
        raise NoiseProcessError(f"the OpenDP process answered {line[:80]!r}") from exc
    if not isinstance(answer, dict):
        raise NoiseProcessError(f"the OpenDP process answered {line[:80]!r}")
    if "error" in answer:
        raise ValueError(str(answer["error"]))  # what the in-process call would raise
    return answer


def _noised(answer: dict[str, Any]) -> Noised:
    """A Laplace answer checked: finite value, positive scale and sensitivity."""
    try:
        out = Noised(float(answer["value"]), float(answer["scale"]),
                     float(answer["sensitivity"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise NoiseProcessError(f"the OpenDP process answered {str(answer)[:80]}") from exc
    if not (math.isfinite(out.value) and out.scale > 0 and out.sensitivity > 0):
        raise NoiseProcessError(f"the OpenDP process answered {str(answer)[:80]}")
    return out


def current() -> NoiseProcess | None:
    """This thread's child process, inside :func:`opendp_out_of_process`; else None."""
    return getattr(_LOCAL, "process", None)


@contextlib.contextmanager
def opendp_out_of_process() -> Iterator[NoiseProcess]:
    """Within the block, this thread's Laplace releases are noised in a child process."""
    outer = current()
    process = NoiseProcess()
    _LOCAL.process = process
    try:
        yield process
    finally:
        _LOCAL.process = outer
        process.close()


def _serve(stdin: IO[str], stdout: IO[str]) -> None:
    for line in stdin:
        answer: dict[str, Any]
        try:
            answer = _answer(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"error": str(exc)}
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    """One request in the child: a Laplace release (no ``op``), or a secure-aggregation
    share's plan or noise (edgetwin.privacy.discrete, in-process here)."""
    op = request.get("op", "laplace")
    if op == "laplace":
        from edgetwin.privacy.mechanism import mechanism_for

        mech = mechanism_for(request["lower"], request["upper"], request["epsilon"])
        return {"value": mech(request["summary"]), "scale": mech.scale,
                "sensitivity": mech.sensitivity}
    from edgetwin.privacy import discrete

    if op == "share_plan":
        params = {k: request[k] for k in discrete.PLAN_PARAMS}
        return discrete.plan_for(**params).fields()
    if op == "share_noise":
        return {"value": discrete.add_share_noise(discrete.SharePlan(**request["plan"]),
                                                  int(request["value"]))}
    raise ValueError(f"unknown request {op!r}")


if __name__ == "__main__":
    _serve(sys.stdin, sys.stdout)
