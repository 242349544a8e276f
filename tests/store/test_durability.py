"""SIGKILL a real ingesting process at random moments: every committed sample survives."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from edgetwin.store import Secret, TwinStore
from tests.store.helpers import PASS

BASE = 1_700_000_000.0
STREAMS = ("s0", "s1", "s2")
ROWS = 40

# The child appends to a few streams and commits in a loop, printing each committed
# sequence number. Every 7th step it starts a brand-new stream (new data keys: a
# keystore rewrite) and every 5th it writes a record, so kills land in every kind of write.
CHILD = textwrap.dedent(
    f"""
    import sys
    from pathlib import Path
    import numpy as np
    from edgetwin.store import Secret, TwinStore
    from edgetwin.types import SampleBatch

    store = TwinStore.open(Path(sys.argv[1]), Secret.passphrase({PASS!r}))
    last = [s.last_t for s in store.streams() if s.name == "s0"]
    seq = int(last[0] - {BASE!r}) + 1 if last else 0
    while True:
        for k, name in enumerate({STREAMS!r}):
            t = {BASE!r} + seq + np.arange({ROWS}) / {ROWS}
            v = np.full(({ROWS}, 2), float(seq))
            v[:, 1] = k
            store.append_samples(SampleBatch.build(name, ["x", "k"], t, v))
        if seq % 7 == 0:
            store.append_samples(SampleBatch.build(f"new{{seq}}", ["x"], [{BASE!r} + seq], [[seq]]))
        if seq % 5 == 0:
            store.put_record("progress", str(seq), {{"seq": seq}})
        store.commit()
        print(seq, flush=True)
        seq += 1
    """
)


def _run_and_kill(home: Path, kill_after: float) -> list[int]:
    """Start the child, SIGKILL it ``kill_after`` seconds later; the seqs it reported."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    buf = b""
    deadline = time.monotonic() + kill_after
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # whatever the child printed before it died was committed first
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        buf += chunk
    stderr = proc.stderr.read() if proc.stderr else b""
    proc.stdout.close()
    if proc.stderr:
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, stderr.decode()
    assert b"Traceback" not in stderr, stderr.decode()
    return [int(line) for line in buf.decode().split()]


def _check(home: Path, committed: set[int]) -> None:
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        for k, name in enumerate(STREAMS):
            seen: set[int] = set()
            for b in store.read_samples(name):
                seqs = b.values[:, 0].astype(int)
                # the values are exactly what the child wrote for those timestamps
                np.testing.assert_array_equal(np.floor(b.t - BASE).astype(int), seqs)
                assert (b.values[:, 1] == k).all()
                seen.update(seqs.tolist())
            missing = committed - seen
            assert not missing, f"{name}: committed seqs lost: {sorted(missing)[:10]}"
        records = store.list_records("progress")
        for seq in committed:
            if seq % 5 == 0:
                assert records[str(seq)] == {"seq": seq}
            if seq % 7 == 0:
                assert sum(len(b) for b in store.read_samples(f"new{seq}")) == 1


def test_sigkill_at_random_moments_loses_nothing_committed(tmp_path: Path) -> None:
    home = tmp_path / "twin"
    TwinStore.create(home, Secret.passphrase(PASS)).close()
    rng = random.Random(20240531)
    committed: set[int] = set()
    for _ in range(12):
        # some kills land while the child is still unlocking, most while it ingests
        got = _run_and_kill(home, rng.uniform(0.2, 1.4))
        committed.update(got)
        _check(home, committed)
    assert len(committed) > 20, "the child never got going; the test proved nothing"
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        report = store.verify()
        assert report.ok, [str(p) for p in report.problems]
