"""Privacy by construction: only a genuine DPRelease can be serialised for the uplink."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetwin.config import SyncConfig
from edgetwin.privacy.release import DPRelease, ForgedRelease, _mint, is_genuine, readmit
from edgetwin.sync.payload import encode_envelope
from edgetwin.sync.signing import DeviceKey
from edgetwin.sync.target import parse_target
from edgetwin.sync.uplink import HttpsUplink
from edgetwin.types import FeatureFrame, Prediction, SampleBatch
from tests.sync.helpers import RunningCollector, make_release, start_collector


def _forgeries() -> list[tuple[str, Any]]:
    genuine = make_release(72.0)
    fields = genuine.to_record()

    class Subclass(DPRelease):
        __slots__ = ()

    sub = object.__new__(Subclass)
    for name in DPRelease.__dataclass_fields__:
        object.__setattr__(sub, name, getattr(genuine, name))

    assembled = object.__new__(DPRelease)
    for name in DPRelease.__dataclass_fields__:
        object.__setattr__(assembled, name, getattr(genuine, name))
    object.__setattr__(assembled, "value", 71.234)  # the raw value, seal copied

    bare = object.__new__(DPRelease)

    frame = FeatureFrame(t=1.0, values=np.array([70.0]), quality=np.array([1.0]),
                         imputed=np.array([False]), schema_version=1)
    batch = SampleBatch.build("hr", ["hr"], [1.0], [[70.0]])
    pred = Prediction(t=1.0, target="hr", step_s=5.0, horizon=(70.0,), band=((60.0, 80.0),),
                      attention=(1.0,), imputed=(), model="m")
    return [
        ("dict of release fields", fields),
        ("feature frame", frame),
        ("sample batch", batch),
        ("prediction", pred),
        ("string", "hr_mean=72"),
        ("bytes", b'{"value": 72}'),
        ("None", None),
        ("subclass with genuine fields", sub),
        ("object.__new__ with edited value", assembled),
        ("object.__new__ bare", bare),
    ]


@pytest.mark.parametrize(("what", "obj"), _forgeries(), ids=[w for w, _ in _forgeries()])
def test_uplink_refuses_everything_but_a_genuine_release(
    tmp_path: Path, what: str, obj: Any
) -> None:
    running: RunningCollector = start_collector(tmp_path / "c.db")
    key = DeviceKey.generate()
    running.collector.enroll(key.public_b64)
    target = parse_target(url=f"http://127.0.0.1:{running.port}/",
                          allow_insecure_loopback=True)
    uplink = HttpsUplink(target, key, SyncConfig(timeout_s=5))
    try:
        assert not is_genuine(obj)
        with pytest.raises(ForgedRelease, match="only a DPRelease"):
            uplink.send(obj)
        with pytest.raises(ForgedRelease):
            encode_envelope(obj, key, 0)
        # The real thing goes through the same uplink: the refusals above were not an outage.
        assert uplink.send(make_release(72.0)) == "stored"
        assert len(running.received) == 1
    finally:
        running.stop()
        running.collector.close()


def test_direct_construction_is_refused() -> None:
    genuine = make_release()
    with pytest.raises(ForgedRelease):
        DPRelease(**genuine.to_record(), _capability=object(), _seal=b"")  # type: ignore[arg-type]


def test_replace_with_an_edited_value_is_refused() -> None:
    genuine = make_release()
    with pytest.raises(ForgedRelease, match="seal"):
        dataclasses.replace(genuine, value=71.234)


def test_readmit_checks_every_field() -> None:
    genuine = make_release()
    again = readmit(genuine.to_record())
    assert is_genuine(again) and again == genuine
    rec = genuine.to_record()
    with pytest.raises(ValueError, match="scale is too small"):
        readmit({**rec, "scale": rec["scale"] / 10})
    with pytest.raises(ValueError, match="keys"):
        readmit({**rec, "raw": [70.0, 71.0]})
    with pytest.raises(ValueError, match="sensitivity"):
        readmit({**rec, "sensitivity": 1.0})


def test_mint_output_is_genuine() -> None:
    rec = make_release().to_record()
    assert is_genuine(_mint(**rec))
