"""Run by test_personal and scripts/bench_refit.py: what a refit costs in a process tuned as
the daemon is (CPU, peak RSS, resident memory left behind), vs a list of the same forecasts.
Prints one JSON line. Arguments: twin home, passphrase."""

from __future__ import annotations

import gc
import json
import resource
import sys
import time
from pathlib import Path

from edgetwin.daemon import memory

memory.tune_malloc()  # as the daemon does, before anything allocates much

sys.path.insert(0, str(Path(__file__).parent))
from twins import LEVELS, FakeEngine  # noqa: E402

from edgetwin.inference.serving import ServingEngine, refit  # noqa: E402
from edgetwin.store import Secret, TwinStore  # noqa: E402


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def settled() -> int:
    """Anonymous RSS after a garbage collection and a trim (what stays resident)."""
    gc.collect()
    memory.trim()
    return status_bytes("RssAnon")


def main() -> None:
    home, passphrase = sys.argv[1], sys.argv[2]
    with TwinStore.open(Path(home), Secret.passphrase(passphrase)) as store:
        engine = FakeEngine()
        engine.targets = tuple(LEVELS)  # the five the twin holds forecasts of, as the real model
        serving = ServingEngine(engine, explain=False)
        newest = store.read_predictions(last=1)[0].t
        refit(store, serving, newest - 6600)  # warm: imports, caches, ~10 min of history
        before, rss_before = settled(), status_bytes("VmRSS")
        cpu0 = time.process_time()
        report = refit(store, serving, newest)
        cpu = time.process_time() - cpu0
        after_refit, refit_peak = settled(), peak_bytes()
        held = list(store.iter_predictions())
        n, list_peak = len(held), peak_bytes()
        del held
        after_list = settled()
    print(json.dumps({
        "forecasts": n, "cpu_s": cpu, "rss_before": rss_before, "refit_peak": refit_peak,
        "refit_kept": after_refit - before, "list_peak": list_peak,
        "list_kept": after_list - after_refit,
        "heads_adopted": sorted(t for t, h in report["heads"].items() if h.get("adopted")),
    }))


if __name__ == "__main__":
    main()
