"""Location gets no LSL outlet: LSL streams are visible to any program on the network."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.interop.test_lsl_outlets import lsl_config

os.environ.setdefault("LSLAPICFG", lsl_config())
pytest.importorskip("pylsl")

from edgetwin.config import LslConfig  # imported after LSLAPICFG is set
from edgetwin.interop.lsl_outlets import LslPublisher
from edgetwin.types import SampleBatch


def test_location_raw_stream_gets_no_lsl_outlet() -> None:
    publisher = LslPublisher(LslConfig(enabled=True, prefix=f"loc{os.getpid()}"), step_s=5.0)
    t = np.array([1.7e9, 1.7e9 + 1])
    location = SampleBatch.build("gps.location", ["lat", "lon", "place", "homedist"], t,
                                 np.array([[45.75, 4.84, 0.0, 0.0], [45.75, 4.84, 0.0, 0.0]]),
                                 units=["deg", "deg", "code", "km"])
    vitals = SampleBatch.build("wrist", ["hr"], t, np.array([[61.0], [62.0]]), units=["bpm"])
    try:
        publisher._push_raw([location, vitals])
        assert set(publisher._raw) == {"wrist"}  # the body's stream is published, not where
    finally:
        publisher.close()
