"""The model registry refuses tampered, truncated or mismatched models with DataCorrupt."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnxruntime as ort
import pytest

from edgetwin.errors import DataCorrupt, UsageError
from edgetwin.features import schema
from edgetwin.inference.engine import InferenceEngine
from edgetwin.inference.registry import default_models_dir, load_manifest
from edgetwin.inference.session import create_session


def _edit(models: Path, change) -> None:  # type: ignore[no-untyped-def]
    path = models / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def test_default_models_dir_follows_env(monkeypatch, models_copy) -> None:
    monkeypatch.setenv("EDGETWIN_MODELS", str(models_copy))
    assert default_models_dir() == models_copy
    assert load_manifest().root == models_copy
    monkeypatch.delenv("EDGETWIN_MODELS")
    assert (default_models_dir() / "manifest.json").exists()


def test_a_flipped_byte_is_refused(models_copy) -> None:
    path = models_copy / "forecaster.int8.onnx"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(DataCorrupt, match="sha256") as info:
        InferenceEngine.load(models_copy)
    assert "forecaster.int8.onnx" in str(info.value) and info.value.exit_code == 4
    InferenceEngine.load(models_copy, precision="fp32")  # the untouched files still load


def test_a_truncated_or_missing_file_is_refused(models_copy) -> None:
    path = models_copy / "imputer.fp32.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataCorrupt, match="bytes but the manifest says"):
        InferenceEngine.load(models_copy, precision="fp32")
    path.unlink()
    with pytest.raises(DataCorrupt, match="cannot be read"):
        InferenceEngine.load(models_copy, precision="fp32")


def test_schema_version_mismatch_is_refused(models_copy) -> None:
    _edit(models_copy, lambda m: m.update(feature_schema_version=schema.SCHEMA_VERSION + 1))
    with pytest.raises(DataCorrupt, match=f"schema v{schema.SCHEMA_VERSION + 1}"):
        InferenceEngine.load(models_copy)


def test_a_feature_the_schema_lacks_is_refused_by_name(models_copy) -> None:
    def rename(m) -> None:  # type: ignore[no-untyped-def]
        m["features"][4] = "eda_phasic"
    _edit(models_copy, rename)
    with pytest.raises(DataCorrupt, match=r"names feature\(s\) 'eda_phasic' that feature "
                       f"schema v{schema.SCHEMA_VERSION} does not have") as info:
        load_manifest(models_copy)
    assert "manifest.json" in str(info.value) and info.value.exit_code == 4


def test_a_feature_named_twice_is_refused(models_copy) -> None:
    def twice(m) -> None:  # type: ignore[no-untyped-def]
        m["features"][1] = "hr"
    _edit(models_copy, twice)
    with pytest.raises(DataCorrupt, match="'hr' twice"):
        load_manifest(models_copy)


def test_the_shipped_manifest_maps_its_features_onto_the_schema(models_copy) -> None:
    m = load_manifest(models_copy)
    assert m.schema_version == 1 < schema.SCHEMA_VERSION
    assert [schema.NAMES[c] for c in m.columns] == list(m.features)
    assert not set(m.features) & set(schema.ENVIRONMENT)  # not inputs of the shipped models


def test_manifest_damage_is_reported(models_copy) -> None:
    (models_copy / "manifest.json").write_text("{not json")
    with pytest.raises(DataCorrupt, match="unreadable"):
        load_manifest(models_copy)
    (models_copy / "manifest.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(DataCorrupt, match="malformed"):
        load_manifest(models_copy)
    with pytest.raises(UsageError, match="no model manifest"):
        load_manifest(models_copy / "nowhere")


def test_paths_outside_the_models_dir_are_refused(models_copy) -> None:
    def escape(m: dict) -> None:
        m["models"]["imputer"]["files"]["int8"]["path"] = "../../etc/passwd"

    _edit(models_copy, escape)
    with pytest.raises(DataCorrupt, match="leaves the models directory"):
        load_manifest(models_copy)


def test_io_that_differs_from_the_manifest_is_refused(models_copy) -> None:
    def rename(m: dict) -> None:
        m["models"]["forecaster"]["files"]["fp32"]["outputs"][0]["name"] = "mean"

    _edit(models_copy, rename)
    with pytest.raises(DataCorrupt, match="manifest promises"):
        InferenceEngine.load(models_copy, precision="fp32")


def test_a_valid_checksum_over_garbage_is_refused(models_copy) -> None:
    garbage = b"this is not an onnx model" * 10

    def swap(m: dict) -> None:
        entry = m["models"]["imputer"]["files"]["fp32"]
        entry["sha256"] = hashlib.sha256(garbage).hexdigest()
        entry["bytes"] = len(garbage)

    (models_copy / "imputer.fp32.onnx").write_bytes(garbage)
    _edit(models_copy, swap)
    with pytest.raises(DataCorrupt, match="onnxruntime cannot load it"):
        create_session(load_manifest(models_copy).file("imputer", "fp32"))


def test_sessions_are_tuned_for_small_cpus() -> None:
    from edgetwin.inference.session import session_options

    so = session_options()
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(UsageError):
        session_options(0)


def test_a_large_batch_does_not_keep_its_memory(models_copy) -> None:
    # The daemon's batches vary (catch-up after a gap, explanations); with ORT's CPU arena
    # one forecast batch of 2,048 windows kept ~81 MiB resident for good.
    import numpy as np

    from edgetwin.daemon import memory

    def rss_mib() -> float:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    memory.tune_malloc()  # as the daemon runs (process-wide, harmless for other tests)
    sess = create_session(load_manifest(models_copy).file("forecaster", "int8"))
    (name, shape), = [(i.name, i.shape) for i in sess.get_inputs()]
    steps, features = shape[0], shape[2]
    small = {name: np.zeros((steps, 1, features), dtype=np.float32)}
    for _ in range(5):
        sess.run(None, small)
    before = rss_mib()
    sess.run(None, {name: np.zeros((steps, 2048, features), dtype=np.float32)})
    for _ in range(5):
        sess.run(None, small)
    memory.trim()
    assert rss_mib() - before < 16.0
