"""Run by test_personal: the resident memory a refit leaves behind, vs a list of the same
forecasts. Prints one JSON line. Arguments: twin home, passphrase, time of the newest forecast."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

from edgetwin.daemon import memory

memory.tune_malloc()  # as the daemon does, before anything allocates much

sys.path.insert(0, str(Path(__file__).parent))
from twins import FakeEngine  # noqa: E402

from edgetwin.inference.serving import ServingEngine, refit  # noqa: E402
from edgetwin.store import Secret, TwinStore  # noqa: E402


def anon_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def settled() -> int:
    gc.collect()
    memory.trim()
    return anon_bytes()


def main() -> None:
    home, passphrase, newest = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with TwinStore.open(Path(home), Secret.passphrase(passphrase)) as store:
        serving = ServingEngine(FakeEngine(), explain=False)
        refit(store, serving, store.read_predictions(last=1)[0].t - 6600)  # warm: ~10 min
        before = settled()
        refit(store, serving, newest)
        after_refit = settled()
        held = list(store.iter_predictions())
        n = len(held)
        del held
        after_list = settled()
    print(json.dumps({"forecasts": n, "refit_kept": after_refit - before,
                      "list_kept": after_list - after_refit}))


if __name__ == "__main__":
    main()
