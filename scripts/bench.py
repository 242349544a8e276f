"""Collect every ``scripts/bench_<area>.py``'s ``run(quick)`` into one JSON document.

Each area reports median and p99 (and ratios against a baseline measured in
the same run); this driver adds the machine and the command that reproduces it.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs (CI smoke)")
    parser.add_argument("--only", default="", help="comma-separated areas, e.g. store,models")
    parser.add_argument("--minutes", type=float, default=None,
                        help="length of time-boxed areas (soak); default per area")
    parser.add_argument("-o", "--output", type=Path, default=None, help="also write JSON here")
    args = parser.parse_args()
    only = {a.strip() for a in args.only.split(",") if a.strip()}
    areas = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    results: dict[str, object] = {}
    failed = []
    for area in areas:
        if only and area not in only:
            continue
        print(f"bench: {area} ...", file=sys.stderr, flush=True)
        spec = importlib.util.spec_from_file_location(f"bench_{area}", HERE / f"bench_{area}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        started = time.perf_counter()
        try:
            spec.loader.exec_module(module)
            if args.minutes is not None and "minutes" in inspect.signature(module.run).parameters:
                results[area] = module.run(args.quick, minutes=args.minutes)
            else:
                results[area] = module.run(args.quick)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            results[area] = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(area)
        print(f"bench: {area} done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    doc = {
        "command": "scripts/bench " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "results": results,
    }
    text = json.dumps(doc, indent=2, default=float)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
