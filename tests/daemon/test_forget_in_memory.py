"""A forget through the running daemon leaves nothing it holds in memory computed from
the forgotten data: buffered samples, the engine's baseline and context, recent forecasts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetwin.config import Config
from edgetwin.daemon.supervisor import Daemon
from edgetwin.features.pipeline import FeaturePipeline
from edgetwin.features.schema import INDEX
from edgetwin.inference.engine import InferenceEngine
from edgetwin.sources.simulator import SimulatedPerson, simulate
from edgetwin.store import Secret, TwinStore

T0 = 1_700_000_000.0
FNIRS = "sim.fnirs"


def test_forget_through_the_daemon_drops_what_it_holds_from_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")
    home = tmp_path / "twin"
    store = TwinStore.create(home, Secret.passphrase("pw"))
    engine = InferenceEngine.load()
    daemon = Daemon(home, Config(), store, [], pipeline=FeaturePipeline(5.0), engine=engine)
    assert daemon.pipeline is not None
    batches = list(simulate(SimulatedPerson.from_seed(2), T0, 240.0, chunk_s=2.0,
                            modalities=("rr", "vitals", "fnirs"), name="sim", dropouts=False))
    first, rest = batches[: len(batches) // 2], batches[len(batches) // 2:]

    def feed(part: list) -> None:  # type: ignore[type-arg]
        for b in part:
            daemon._persist(b)
            daemon._frames(daemon.pipeline.push(b))  # type: ignore[union-attr]
        daemon._commit()

    feed(first)
    assert daemon.recent_predictions
    last_before = daemon.last_frame_t
    assert last_before is not None
    daemon._forget({"cmd": "forget", "stream": FNIRS})

    assert not daemon.recent_predictions
    ctx = engine.state()["context"]
    assert all(t is None for t in ctx["t"])  # nothing of the old context or baseline is left
    assert not engine.baseline.counts.any()  # back to the prior: no observed value counted
    # the fNIRS sensor is gone (unpaired); the others go on
    feed([b for b in rest if b.stream != FNIRS])
    hbo = INDEX["fnirs_hbo"]
    assert not [f.t for f in store.read_frames() if np.isfinite(f.values[hbo])]
    # the engine's context holds only frames observed after the forget
    assert all(t is None or t > last_before for t in engine.state()["context"]["t"])
    store.close()
