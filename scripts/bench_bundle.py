"""Bundle benchmark: export and import throughput and peak RSS, at two twin sizes.

Workload: 16-channel EEG at 250 Hz, heart rate at 1 Hz (irregular, so CSV) and
16-channel fNIRS at 10 Hz (SNIRF). Full mode holds one day of it (and a
quarter day for the flatness comparison); quick mode 40 and 10 minutes. Each
export and import runs in a fresh child process, whose peak RSS is read from
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it exits; a child that
only imports edgetwin and unlocks the twin is the RSS baseline, and
``pyrage.encrypt_io`` of a file of the same plaintext size is the throughput
baseline. Flat memory shows as ``rss_growth_large_vs_small`` close to 1.

Run: ``.venv/bin/python scripts/bench.py --only bundle`` (add ``--quick`` for CI).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PASS = "bench passphrase"
T0 = 1_767_225_600.0

_CHILD_PRELUDE = textwrap.dedent(
    f"""
    import json, os, sys, time
    sys.path.insert(0, {str(ROOT)!r})
    os.environ["EDGETWIN_KDF_PROFILE"] = "test"
    from pathlib import Path
    from edgetwin.store import Secret, TwinStore
    args = json.loads(sys.argv[1])
    """
)

_BUILD = _CHILD_PRELUDE + textwrap.dedent(
    """
    import numpy as np
    from edgetwin.types import SampleBatch
    rng = np.random.default_rng(0)
    eeg = tuple(f"eeg_c{i}" for i in range(16))
    nirs = tuple(f"fnirs_s{i // 4}_d{i % 4}_{760 if i % 2 else 850}" for i in range(16))
    store = TwinStore.create(Path(args["home"]), Secret.passphrase(args["pass"]))
    with store:
        step = 600  # ten minutes per append
        for s in range(0, args["seconds"], step):
            n = min(step, args["seconds"] - s)
            t = args["t0"] + s + np.arange(n * 250) / 250.0
            v = np.round(rng.normal(0.0, 20.0, (len(t), 16)) / 0.1) * 0.1  # 0.1 uV ADC steps
            store.append_samples(SampleBatch.build("eeg", eeg, t, v, meta={"rate_hz": 250}))
            th = args["t0"] + s + np.arange(n) + rng.uniform(-0.2, 0.2, n)
            store.append_samples(SampleBatch.build("hr", ("hr",), th, rng.normal(65, 5, (n, 1))))
            tn = args["t0"] + s + np.arange(n * 10) / 10.0
            vn = rng.uniform(900, 2100, (len(tn), 16))
            store.append_samples(SampleBatch.build("fnirs", nirs, tn, vn, meta={"rate_hz": 10}))
            store.commit()
    print(json.dumps({}))
    """
)

_EXPORT = _CHILD_PRELUDE + textwrap.dedent(
    """
    from edgetwin.bundle import export_bundle
    with TwinStore.open(Path(args["home"]), Secret.passphrase(args["pass"])) as store:
        t = time.perf_counter()
        r = export_bundle(store, Path(args["out"]), recipients=[args["recipient"]])
        print(json.dumps({"s": time.perf_counter() - t, "plain": r.plaintext_bytes,
                          "bytes": r.bytes}))
    """
)

_IMPORT = _CHILD_PRELUDE + textwrap.dedent(
    """
    from edgetwin.bundle import import_bundle
    from edgetwin.bundle.age import load_identities
    t = time.perf_counter()
    r = import_bundle(Path(args["bundle"]), Path(args["home"]),
                      identities=load_identities(Path(args["identity"])),
                      secret=Secret.passphrase(args["pass"]))
    print(json.dumps({"s": time.perf_counter() - t, "samples": r.samples}))
    """
)

_BASELINE = _CHILD_PRELUDE + textwrap.dedent(
    """
    import edgetwin.bundle, pyrage, pyedflib, h5py
    with TwinStore.open(Path(args["home"]), Secret.passphrase(args["pass"])) as store:
        store.streams()
    if args.get("plain"):
        import io
        size = args["plain"]
        src = Path(args["scratch"])
        with src.open("wb") as f:
            for _ in range(size // (1 << 20) + 1):
                f.write(os.urandom(1 << 20))
        rcp = pyrage.x25519.Recipient.from_str(args["recipient"])
        t = time.perf_counter()
        with src.open("rb") as i, open(os.devnull, "wb") as o:
            pyrage.encrypt_io(i, o, [rcp])
        print(json.dumps({"s": time.perf_counter() - t}))
        src.unlink()
    else:
        print(json.dumps({}))
    """
)


def _child(code: str, args: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Run ``code`` in a fresh interpreter: its JSON result and its peak RSS in MB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        capture_output=True, text=True, check=False, env={**os.environ, "PYTHONWARNINGS": ""},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench child failed: {proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest of any child so far: run the small twin first
    peak_kb = max(after, before)
    return json.loads(proc.stdout.strip().splitlines()[-1]), peak_kb / 1024.0


def _rss_of(code: str, args: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Peak RSS of one child, measured in a grandchild-free way: a wrapper reports its own."""
    wrapper = textwrap.dedent(
        f"""
        import json, resource, subprocess, sys
        proc = subprocess.run([sys.executable, "-c", {code!r}, sys.argv[1]],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr); sys.exit(1)
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        print(json.dumps(out))
        """
    )
    result, _ = _child(wrapper, args)
    return result, float(result.pop("rss_mb"))


def _keygen(tmp: Path) -> tuple[Path, str]:
    import pyrage

    ident = pyrage.x25519.Identity.generate()
    path = tmp / "identity.txt"
    path.write_text(f"{ident}\n")
    path.chmod(0o600)  # identity files open to others are refused
    return path, str(ident.to_public())


def _size(seconds: int, tmp: Path, identity: Path, recipient: str) -> dict[str, Any]:
    home = tmp / f"twin-{seconds}"
    base = {"pass": PASS, "t0": T0}
    _child(_BUILD, {**base, "home": str(home), "seconds": seconds})
    _, base_rss = _rss_of(_BASELINE, {**base, "home": str(home)})
    out = tmp / f"bundle-{seconds}.age"
    exp, exp_rss = _rss_of(_EXPORT, {**base, "home": str(home), "out": str(out),
                                     "recipient": recipient})
    enc, _ = _rss_of(_BASELINE, {**base, "home": str(home), "plain": exp["plain"],
                                 "scratch": str(tmp / "scratch.bin"), "recipient": recipient})
    imp, imp_rss = _rss_of(_IMPORT, {**base, "home": str(tmp / f"restored-{seconds}"),
                                     "bundle": str(out), "identity": str(identity)})
    return {
        "seconds_of_data": seconds,
        "plaintext_mb": exp["plain"] / 1e6,
        "bundle_mb": exp["bytes"] / 1e6,
        "export_s": exp["s"],
        "import_s": imp["s"],
        "export_mb_s": exp["plain"] / 1e6 / exp["s"],
        "import_mb_s": exp["plain"] / 1e6 / imp["s"],
        "encrypt_only_mb_s": exp["plain"] / 1e6 / enc["s"],
        "export_rss_mb": exp_rss,
        "import_rss_mb": imp_rss,
        "baseline_rss_mb": base_rss,
    }


def run(quick: bool) -> dict[str, Any]:
    """Export/import MB/s and peak RSS at two sizes (the larger 4x the smaller)."""
    small, large = (600, 2400) if quick else (21600, 86400)
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as d:
        tmp = Path(d)
        identity, recipient = _keygen(tmp)
        a = _size(small, tmp, identity, recipient)
        b = _size(large, tmp, identity, recipient)
    runs = [a, b]
    return {
        "export_throughput": {
            "median": b["export_mb_s"],
            "p99": min(r["export_mb_s"] for r in runs),
            "unit": "MB/s of plaintext bundle",
            "encrypt_only_mb_s": b["encrypt_only_mb_s"],
            "ratio_vs_encrypt_only": b["export_mb_s"] / b["encrypt_only_mb_s"],
            "runs": runs,
        },
        "import_throughput": {
            "median": b["import_mb_s"],
            "p99": min(r["import_mb_s"] for r in runs),
            "unit": "MB/s of plaintext bundle",
        },
        "export_peak_rss": {
            "median": b["export_rss_mb"],
            "p99": max(r["export_rss_mb"] for r in runs),
            "unit": "MB",
            "baseline_mb": b["baseline_rss_mb"],
            "rss_growth_large_vs_small": b["export_rss_mb"] / a["export_rss_mb"],
            "data_growth_large_vs_small": b["plaintext_mb"] / a["plaintext_mb"],
        },
        "import_peak_rss": {
            "median": b["import_rss_mb"],
            "p99": max(r["import_rss_mb"] for r in runs),
            "unit": "MB",
            "baseline_mb": b["baseline_rss_mb"],
            "rss_growth_large_vs_small": b["import_rss_mb"] / a["import_rss_mb"],
        },
    }


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=1))
