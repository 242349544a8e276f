#!/usr/bin/env python3
"""What an export or import killed with SIGKILL mid-way leaves on disk.

Builds a twin of ``--seconds`` of ``--channels``-channel EEG at 250 Hz, then
runs an export and an import in child processes and kills each (SIGKILL) at
the point where every member is staged in clear (export: before encrypting;
import: after unpacking, before restoring). Prints the bytes of regular files
left in their staging directories: the plaintext a crash leaves behind.

    .venv/bin/python scripts/staging_leftovers.py --seconds 600 --channels 32

``--workdir DIR`` keeps the twin and the leftovers there (for a test that then
unlocks the twin); the passphrase is in ``DIR/pass`` (mode 0600).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PASS = "staging leftovers passphrase"
RATE = 250.0


def _build(home: Path, seconds: int, channels: int) -> None:
    import numpy as np

    from edgetwin.store import KdfParams, Secret, TwinStore
    from edgetwin.types import SampleBatch

    rng = np.random.default_rng(0)
    names = tuple(f"eeg_ch{i:02d}" for i in range(channels))
    t0 = 1_767_225_600.0
    with TwinStore.create(home, Secret.passphrase(PASS), kdf=KdfParams.for_tests()) as store:
        step = int(RATE * 60)
        for start in range(0, int(RATE * seconds), step):
            n = min(step, int(RATE * seconds) - start)
            t = t0 + (start + np.arange(n)) / RATE
            store.append_samples(SampleBatch.build("cap.eeg", names, t,
                                                   rng.normal(0.0, 25.0, (n, channels)),
                                                   meta={"rate_hz": RATE}))
            store.commit()
        store.put_record("consent", "hr_mean", {"granted": True})


def _child(kind: str, args: list[str]) -> None:
    """Run an export or import and stop (to be killed) once every member is staged."""
    from edgetwin.bundle import export_bundle, import_bundle
    from edgetwin.bundle.age import load_identities
    from edgetwin.store import KdfParams, Secret, TwinStore

    def say(msg: str) -> None:
        if msg.startswith("encrypting") or msg == "restoring":
            print("STAGED", flush=True)
            time.sleep(3600)

    if kind == "export":
        home, out, recipient = args
        with TwinStore.open(Path(home), Secret.passphrase(PASS)) as store:
            export_bundle(store, Path(out), recipients=[recipient], progress=say)
    else:
        bundle, identity, target = args
        import_bundle(Path(bundle), Path(target), identities=load_identities(Path(identity)),
                      secret=Secret.passphrase(PASS), kdf=KdfParams.for_tests(), progress=say)


def _kill_when_staged(argv: list[str]) -> None:
    proc = subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "STAGED":
        proc.wait()
        raise SystemExit(f"the child ended before staging: {argv} -> {proc.returncode}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _regular_bytes(root: Path) -> tuple[int, int]:
    """(bytes, files) of the regular files under ``root``, links not followed."""
    total = files = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                total += st.st_size
                files += 1
    return total, files


def measure(work: Path, seconds: int, channels: int) -> dict[str, Any]:
    import pyrage

    home = work / "home"
    _build(home, seconds, channels)
    identity = pyrage.x25519.Identity.generate()
    key = work / "identity.txt"
    key.write_text(str(identity) + "\n")
    key.chmod(0o600)
    (work / "pass").write_text(PASS + "\n")
    (work / "pass").chmod(0o600)
    recipient = str(identity.to_public())

    # a complete bundle for the import to be killed in
    from edgetwin.bundle import export_bundle
    from edgetwin.store import Secret, TwinStore

    bundle = work / "twin.age"
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        plain = export_bundle(store, bundle, recipients=[recipient]).plaintext_bytes

    _kill_when_staged(["--child", "export", str(home), str(work / "killed.age"), recipient])
    export_dirs = sorted(home.glob(".export-*"))
    target = work / "imported"
    _kill_when_staged(["--child", "import", str(bundle), str(key), str(target)])
    import_dirs = sorted(work.glob(f".{target.name}.import-*"))
    exp = [_regular_bytes(d) for d in export_dirs]
    imp = [_regular_bytes(d / "members") for d in import_dirs]
    return {
        "twin": {"seconds": seconds, "channels": channels, "bundle_plaintext_bytes": plain},
        "export_killed": {
            "staging_dirs": [str(d) for d in export_dirs],
            "plaintext_bytes": sum(b for b, _ in exp),
            "plaintext_files": sum(f for _, f in exp),
        },
        "import_killed": {
            "staging_dirs": [str(d) for d in import_dirs],
            "plaintext_bytes": sum(b for b, _ in imp),
            "plaintext_files": sum(f for _, f in imp),
        },
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("EDGETWIN_KDF_PROFILE", "test")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = measure(args.workdir, args.seconds, args.channels)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = measure(Path(tmp), args.seconds, args.channels)
    if args.json:
        print(json.dumps(result))
        return
    print(f"twin: {args.seconds} s of {args.channels}-channel EEG at {RATE:g} Hz, bundle "
          f"plaintext {result['twin']['bundle_plaintext_bytes'] / 1e6:.1f} MB")
    for kind in ("export_killed", "import_killed"):
        r = result[kind]
        print(f"{kind.replace('_', ' ')} with SIGKILL: {r['plaintext_bytes'] / 1e6:.1f} MB of "
              f"plaintext in {r['plaintext_files']} file(s) left in staging")


if __name__ == "__main__":
    main()
