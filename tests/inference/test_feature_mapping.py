"""Models name the features they consume; the runtime selects those columns of the schema.

A real (tiny) ONNX imputer and forecaster are built here for a model that reads a named
subset of schema v2 in its own order, ``("co2", "hr", "ambient_temp")``, and forecasts
``hr`` and ``co2``: its forecasts sit at each target's own level, so a column taken from
the wrong place shows. The shipped v1 models run on v2 frames and never read the
surroundings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgetwin.errors import DataCorrupt
from edgetwin.features.schema import ENVIRONMENT, INDEX, LAYOUTS, NAMES, SCHEMA_VERSION
from edgetwin.inference.engine import InferenceEngine
from edgetwin.inference.registry import load_manifest
from edgetwin.types import FeatureFrame

FEATURES = ("co2", "hr", "ambient_temp")
TARGETS = ("hr", "co2")
W, T, H, Q = 4, 8, 2, (0.025, 0.5, 0.975)
F = len(FEATURES)
T0 = 1_767_225_600.0


def _save(model: object, path: Path) -> dict[str, object]:
    onnx.checker.check_model(model)
    blob = model.SerializeToString()  # type: ignore[attr-defined]
    path.write_bytes(blob)
    return {"path": path.name, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}


def _tiny_models(root: Path) -> Path:
    """An identity imputer and a forecaster whose median is each target's context level."""
    root.mkdir()
    opset = [helper.make_opsetid("", 17)]
    imp = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["z"], ["g"])], "imputer",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", W * F]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", W * F])],
        [helper.make_tensor_value_info("g", TensorProto.FLOAT, ["batch", W * F])],
    ), opset_imports=opset)
    k = len(TARGETS)
    band = np.tile(np.array([-1.0, 0.0, 1.0], np.float32), H * k).reshape(1, 1, 1, -1)
    consts = [
        helper.make_tensor("ax02", TensorProto.INT64, [2], [0, 2]),
        helper.make_tensor("ax2", TensorProto.INT64, [1], [2]),
        helper.make_tensor("ax1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("uniform", TensorProto.FLOAT, [], [1.0 / T]),
        helper.make_tensor("shape4", TensorProto.INT64, [4], [1, 1, -1, 1]),
        helper.make_tensor("reps", TensorProto.INT64, [4], [1, 1, 1, H * k * len(Q)]),
        helper.make_tensor("band", TensorProto.FLOAT, list(band.shape), band.ravel().tolist()),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["x", "ax02"], ["per_b"], keepdims=0),
        helper.make_node("Mul", ["per_b", "zero"], ["zeros_b"]),
        helper.make_node("Reshape", ["zeros_b", "shape4"], ["z4"]),
        helper.make_node("Tile", ["z4", "reps"], ["zq"]),
        helper.make_node("Add", ["zq", "band"], ["quantiles"]),
        helper.make_node("ReduceSum", ["x", "ax2"], ["per_tb"], keepdims=1),
        helper.make_node("Mul", ["per_tb", "zero"], ["zeros_tb"]),
        helper.make_node("Add", ["zeros_tb", "uniform"], ["flat"]),
        helper.make_node("Unsqueeze", ["flat", "ax1"], ["attention"]),
    ]
    fc = helper.make_model(helper.make_graph(
        nodes, "forecaster",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, "batch", 2 * F])],
        [helper.make_tensor_value_info("quantiles", TensorProto.FLOAT,
                                       [1, 1, "batch", H * k * len(Q)]),
         helper.make_tensor_value_info("attention", TensorProto.FLOAT, [T, 1, "batch", 1])],
        initializer=consts,
    ), opset_imports=opset)
    io = {
        "imputer": {"inputs": [{"name": "z", "shape": ["batch", W * F]},
                               {"name": "mask", "shape": ["batch", W * F]}],
                    "outputs": [{"name": "g", "shape": ["batch", W * F]}]},
        "forecaster": {"inputs": [{"name": "x", "shape": [T, "batch", 2 * F]}],
                       "outputs": [{"name": "quantiles", "shape": [1, 1, "batch", H * k * 3]},
                                   {"name": "attention", "shape": [T, 1, "batch", 1]}]},
    }
    files = {}
    for name, model in (("imputer", imp), ("forecaster", fc)):
        entry = {**_save(model, root / f"{name}.onnx"), **io[name]}
        files[name] = {"int8": entry, "fp32": entry}
    manifest = {
        "format": 1,
        "feature_schema_version": SCHEMA_VERSION,
        "features": list(FEATURES),
        "step_s": 5.0,
        "z_clip": 5.0,
        "baseline_prior": {"mean": [800.0, 70.0, 21.0], "std": [200.0, 10.0, 2.0],
                           "min_std": [20.0, 1.0, 0.2], "count": 10.0},
        "models": {
            "imputer": {"files": files["imputer"], "window": W, "interpolate": []},
            "forecaster": {"files": files["forecaster"], "context": T, "horizon": H,
                           "targets": list(TARGETS), "quantiles": list(Q), "min_context": 2},
        },
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _frame(t: float, **values: float) -> FeatureFrame:
    v = np.full(len(NAMES), np.nan)
    for name, x in values.items():
        v[INDEX[name]] = x
    return FeatureFrame(t, v, np.where(np.isfinite(v), 1.0, 0.0), np.zeros(len(NAMES), bool),
                        SCHEMA_VERSION)


def test_a_model_reading_a_named_subset_gets_those_columns(tmp_path: Path) -> None:
    models = _tiny_models(tmp_path / "models")
    manifest = load_manifest(models)
    assert manifest.columns == (INDEX["co2"], INDEX["hr"], INDEX["ambient_temp"])
    eng = InferenceEngine.load(models, precision="fp32")
    # every other column holds a value at a third scale: reading it would show
    others = {n: 5000.0 for n in NAMES if n not in FEATURES}
    frames = [_frame(T0 + 5 * i, **{**others, "co2": 900.0 + (i % 2), "hr": 61.0 - (i % 2),
                                    "ambient_temp": 21.5}) for i in range(12)]
    frames[9] = _frame(frames[9].t, **{**others, "co2": 900.0, "ambient_temp": 21.5})  # no hr
    out = eng.observe_many(frames)
    preds = {p.target: p for _, ps in out for p in ps}
    assert set(preds) == {"hr", "co2"}
    assert preds["hr"].horizon[0] == pytest.approx(60.5, abs=0.6)
    assert preds["co2"].horizon[0] == pytest.approx(900.5, abs=0.6)
    lo, hi = preds["hr"].band[0]
    assert lo < preds["hr"].horizon[0] < hi
    filled, _ = out[9]
    assert filled.values.shape == (len(NAMES),) and filled.schema_version == SCHEMA_VERSION
    assert filled.imputed[INDEX["hr"]] and np.isfinite(filled.values[INDEX["hr"]])
    assert filled.imputed.sum() == 1  # only the model's own column was filled
    assert filled.values[INDEX["pm2_5"]] == 5000.0  # columns it does not read pass through


def test_a_model_naming_a_feature_the_schema_lacks_is_refused(tmp_path: Path) -> None:
    models = _tiny_models(tmp_path / "models")
    path = models / "manifest.json"
    raw = json.loads(path.read_text())
    raw["features"][2] = "noise_db"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataCorrupt) as info:
        InferenceEngine.load(models, precision="fp32")
    msg = str(info.value)
    assert "'noise_db'" in msg and f"schema v{SCHEMA_VERSION} does not have" in msg
    assert str(path) in msg and "'co2'" not in msg.split("(it has", maxsplit=1)[0]


def test_the_shipped_models_never_read_the_surroundings(sim_frames) -> None:  # type: ignore[no-untyped-def]
    """The same body frames with and without room, air and place values: same forecasts;
    and v1 frames (13 columns, schema 1) give the same as their v2 upgrade."""
    body = sim_frames(minutes=6)
    room = {"ambient_temp": 26.0, "humidity": 70.0, "pressure": 990.0, "co2": 2500.0,
            "pm2_5": 80.0, "pm10": 120.0, "place": 2.0, "home_distance": 12.0}
    with_room = []
    for f in body:
        v, q = f.values.copy(), f.quality.copy()
        for name, x in room.items():
            v[INDEX[name]], q[INDEX[name]] = x, 1.0
        with_room.append(FeatureFrame(f.t, v, q, f.imputed, f.schema_version))
    v1 = [FeatureFrame(f.t, f.values[:13].copy(), f.quality[:13].copy(),
                       f.imputed[:13].copy(), 1) for f in body]
    runs = []
    for frames in (body, with_room, v1):
        eng = InferenceEngine.load(precision="fp32")
        runs.append([p.horizon for _, ps in eng.observe_many(frames) for p in ps])
    assert runs[0], "no forecasts"
    assert runs[0] == runs[1] == runs[2]
    assert not set(load_manifest().features) & set(ENVIRONMENT)
    assert load_manifest().features == LAYOUTS[1]
