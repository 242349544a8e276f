"""FHIR/OMH provenance: a room thermometer is never named as the device of skin temperature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetwin.interop.windows import feeding_source, sources_of
from edgetwin.store import Secret, TwinStore
from edgetwin.types import SampleBatch

T0 = 1_767_225_600.0


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


def test_skin_temperature_comes_from_the_wrist_not_the_room(tmp_path: Path) -> None:
    t = T0 + np.arange(600.0)
    with TwinStore.create(tmp_path / "twin", Secret.passphrase("room")) as store:
        store.append_samples(SampleBatch.build("wrist.vitals", ("temp",), t,
                                               np.full((600, 1), 33.0)))
        store.append_samples(SampleBatch.build("bedroom.climate", ("temp", "humidity"), t[::30],
                                               np.full((20, 2), 21.0)))
        store.commit()
        sources = sources_of(store)
    kinds = {s.name: s.kinds for s in sources}
    assert kinds["bedroom.climate"] == frozenset({"ambient", "humidity"})
    assert kinds["wrist.vitals"] == frozenset({"temp"})
    src = feeding_source("skin_temp", T0 + 100, T0 + 105, sources)
    assert src is not None and src.name == "wrist.vitals"  # one candidate: the wrist
