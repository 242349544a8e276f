"""The shipped models/: complete manifest, small int8 files, and int8 within the accuracy gate."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from edgetwin.features import schema
from edgetwin.inference.fill import imputer_feeds
from edgetwin.inference.registry import load_manifest
from edgetwin.inference.session import create_session

from .conftest import MODELS


def test_shipped_manifest_is_complete() -> None:
    raw = json.loads((MODELS / "manifest.json").read_text())
    assert raw["feature_schema_version"] == schema.SCHEMA_VERSION
    assert raw["step_s"] == 5.0
    for name in ("imputer", "forecaster"):
        for prec in ("int8", "fp32"):
            entry = raw["models"][name]["files"][prec]
            blob = (MODELS / entry["path"]).read_bytes()
            assert hashlib.sha256(blob).hexdigest() == entry["sha256"]
            assert entry["bytes"] == len(blob) < 2_000_000  # small enough for a Pi's SD card
            assert entry["opset"] >= 17 and entry["inputs"] and entry["outputs"]
        int8 = raw["models"][name]["files"]["int8"]["bytes"]
        fp32 = raw["models"][name]["files"]["fp32"]["bytes"]
        assert int8 <= fp32 / 3, (name, int8 / fp32)
    sizes = {
        p: sum(raw["models"][n]["files"][p]["bytes"] for n in raw["models"])
        for p in ("int8", "fp32")
    }
    assert sizes["int8"] <= 0.3 * sizes["fp32"], sizes
    fc = raw["models"]["forecaster"]["files"]["fp32"]
    assert (
        fc["ops"].count("LSTM") == 1 and "Squeeze" not in fc["ops"] and "Reshape" not in fc["ops"]
    )
    q8 = raw["models"]["forecaster"]["files"]["int8"]["ops"]
    assert "LSTM" in q8 or "DynamicQuantizeLSTM" in q8
    gate = raw["metrics"]["quantization"]
    assert gate["passed"] and gate["imputer"]["passed"] and gate["forecaster"]["passed"]
    # the accuracy claims: beat every baseline on the aggregate, real and simulated data
    for data in ("real", "sim"):
        imp = raw["metrics"]["imputer"][data]["aggregate_z"]
        assert imp["gain"] < min(imp["locf"], imp["linear"]), (data, imp)
        fcm = raw["metrics"]["forecaster"][data]["aggregate_mae_z"]
        assert fcm["model"] < min(fcm["persistence"], fcm["context_mean"], fcm["linear_trend"]), (
            data,
            fcm,
        )
    for part in ("imputer", "forecaster", "quantization"):
        assert part in raw["metrics"]
    assert raw["training"]["real_test"] and raw["training"]["seed"] == 0
    assert (MODELS / "MODEL_CARD.md").read_text().lower().count("not a medical device") >= 1


def test_int8_matches_fp32_on_held_out_windows() -> None:
    """The quantisation gate: max |int8 - fp32| <= 0.05 (z units), attention rel. L2 <= 1 %.

    Both models work in each window's own normalised units; the window's spread
    (``scale``) maps a difference back to the person's standardised units.
    """
    manifest = load_manifest(MODELS)
    held = np.load(MODELS / "heldout_windows.npz")
    imp = {p: create_session(manifest.file("imputer", p)) for p in ("fp32", "int8")}
    fc = {p: create_session(manifest.file("forecaster", p)) for p in ("fp32", "int8")}
    z, mask = held["imputer_z"], held["imputer_mask"]
    feeds, _, scale = imputer_feeds(z, mask)
    a, b = (imp[p].run(None, feeds)[0].reshape(z.shape) for p in ("fp32", "int8"))
    assert (np.abs(a - b) * scale * ~mask).max() <= 0.05
    xf = np.ascontiguousarray(held["forecaster_x"].transpose(1, 0, 2))
    n = xf.shape[1]
    (qa, att_a), (qb, att_b) = (fc[p].run(None, {"x": xf}) for p in ("fp32", "int8"))
    k = len(manifest.targets)
    diff = np.abs(qa - qb).reshape(n, manifest.horizon, k, -1)
    assert (diff * held["forecaster_scale"][:, None, :, None]).max() <= 0.05
    att_a, att_b = att_a[:, 0, :, 0], att_b[:, 0, :, 0]
    rel = np.linalg.norm(att_a - att_b, axis=0) / np.linalg.norm(att_a, axis=0)
    assert rel.max() <= 0.01
    assert n >= 32 and z.shape[0] >= 32
