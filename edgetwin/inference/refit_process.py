"""The daemon's refit in a short-lived child process, so its memory never joins the daemon's.

A refit reads and scores a day of forecasts and frames: ~3 s of CPU here and a peak of
~20 MiB above the daemon's steady RSS, every half hour. malloc keeps much of that peak
after it is freed (the kept-free steps of the soak's memory curve), and its high-water
mark was the daemon's largest. In a child the whole peak is handed back to the kernel
when the child exits; the daemon receives a plan of a few KiB (the heads' weights, the
sources, the score) and stores it as :func:`~edgetwin.inference.serving.refit` would.

The child is ``python -m edgetwin.inference.refit_process``. It gets the twin's master
key over its stdin (a pipe: nothing touches disk), opens its own read-only connection,
imports neither onnxruntime nor the sources, writes nothing, and answers one JSON
object on stdout. Starting Python and importing numpy and the store costs ~0.3 s of CPU
here, a tenth of the refit itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgetwin.errors import EdgetwinError
from edgetwin.inference.serving import (
    RefitParams,
    RefitPlan,
    ServingEngine,
    apply_refit,
    plan_refit,
)

# Generous: a Raspberry Pi reads a day in ~10 s; a twin on a slow SD card can take longer.
CHILD_TIMEOUT_S = 600.0
# The refit is background work beside the daemon's readers: on a busy core the child yields
# to them (nice 10 weighs ~1/10 of the daemon's threads in the kernel's scheduler).
CHILD_NICENESS = 10
_STDERR_TAIL = 4000  # characters of a failed child's traceback logged
_LOGGER = logging.getLogger(__name__)


class RefitProcessError(EdgetwinError):
    """The refit's child process failed; nothing was stored."""


def refit_out_of_process(
    store: Any, serving: ServingEngine, now: float | None = None, *,
    timeout_s: float = CHILD_TIMEOUT_S,
) -> dict[str, Any]:
    """:func:`~edgetwin.inference.serving.refit`, with the day read and fitted in a child.

    Returns the refit's report, with ``child`` (its pid, CPU seconds and peak RSS). Raises
    :class:`RefitProcessError` (nothing stored) if the child fails, times out or answers
    anything but a well-formed plan.
    """
    now = time.time() if now is None else now
    request = {"handoff": store.handoff(), "params": asdict(RefitParams.of(serving)),
               "now": now}
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edgetwin.inference.refit_process"],
            input=json.dumps(request).encode(), capture_output=True, timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RefitProcessError(
            f"the refit's child process did not finish within {timeout_s:g} s",
            hint="nothing was stored; the refit is tried again at its next interval",
        ) from exc
    except OSError as exc:
        raise RefitProcessError(f"could not start the refit's child process: {exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        if "\n" in err:  # a traceback: into the log; its last line into the error
            _LOGGER.warning("the refit's child process failed:\n%s", err[-_STDERR_TAIL:])
        last = err.splitlines()[-1] if err else "(no output)"
        raise RefitProcessError(
            f"the refit's child process exited with {proc.returncode}: {last}",
            hint="nothing was stored; run 'python -m edgetwin.inference.refit_process' "
                 "to see it start",
        )
    try:
        answer = json.loads(proc.stdout)
        plan = RefitPlan.from_json(answer.get("plan") if isinstance(answer, dict) else None)
    except ValueError as exc:  # JSONDecodeError is one
        raise RefitProcessError(
            f"the refit's child process answered a malformed plan: {exc}",
            hint="nothing was stored",
        ) from exc
    report = apply_refit(store, serving, plan)
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    report["child"] = {"pid": answer.get("pid"), "wall_s": time.monotonic() - started, **usage}
    return report


def _child(stdin: bytes) -> dict[str, Any]:
    """The child's work: one request in, one plan out."""
    from edgetwin.store import TwinStore

    with contextlib.suppress(OSError):  # where niceness cannot be raised, at the daemon's
        os.nice(CHILD_NICENESS)

    request = json.loads(stdin)
    params = RefitParams(**request["params"])
    now = float(request["now"])
    if not math.isfinite(now):
        raise ValueError(f"refit time {now!r} is not finite")
    with TwinStore.from_handoff(request.pop("handoff")) as reader:
        plan = plan_refit(reader, params, now)
    return {"plan": plan.to_json(), "pid": os.getpid(), "usage": _usage()}


def _usage() -> dict[str, float]:
    """This process's CPU seconds and peak RSS. The peak is VmHWM, not ``ru_maxrss``: Linux
    carries the parent's high-water mark over the exec into ``ru_maxrss``."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {"cpu_s": ru.ru_utime + ru.ru_stime, "nice": float(os.nice(0))}
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                out["peak_rss_mib"] = int(line.split()[1]) / 1024
    except OSError:  # not Linux: no peak
        pass
    return out


def _json_default(value: Any) -> Any:
    """numpy scalars in a report (``float(np.float64)``); anything else is a bug."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} in a refit plan")


def _main() -> int:
    try:
        answer = _child(sys.stdin.buffer.read())
    except EdgetwinError as exc:  # a known failure (a damaged twin, a wrong key): one line
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(answer, default=_json_default))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
