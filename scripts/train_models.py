"""Train, export, quantise and evaluate edgetwin's on-device models from one seed.

    .venv/bin/python scripts/train_models.py [--data DIR] [--seed 0] [--out models] [--quick]

Real people (``DIR/rr``, 91 people) are split train / validation / test by
person, stratified over their datasets (``models/split.json``); simulated
people add the targets the RR recordings do not have (SpO2, skin temperature,
EDA) and the EEG/fNIRS inputs. Every choice (the checkpoint, the ridge
baseline's penalty, the band's conformal width) is made on the validation
people; the test people are scored once, at the end, and ``models/metrics.md``
records the commit that scored them.

data -> GAIN imputer -> LSTM-attention forecaster (+ ridge skip path) ->
ONNX (fp32, folded) -> int8 -> test scoring with block-bootstrap CIs ->
``models/``. Needs the ``train`` extra.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from modeling import data, evaluate, export, honest, realdata, spec, training, windows

from edgetwin.inference.fill import impute, imputer_feeds

_LOGGER = logging.getLogger("train")
ROOT = Path(__file__).resolve().parents[1]
MIN_CONTEXT = 12
HR = spec.FEATURES.index("hr")
K_HR = spec.TARGETS.index("hr")
TIDX = np.array(spec.TARGET_INDEX)
SIM = (12, 2.0)  # simulated people x hours (the wristband ones; every third wears the headset 1 h)
_SCHEMES = {
    "dynamic": "onnxruntime dynamic quantisation: int8 weights (per channel for the LSTM, "
    "per tensor for MatMul), activations quantised per call (DynamicQuantizeLSTM, "
    "DynamicQuantizeMatMul)",
    "weight-only": "weight-only int8: per-output-channel symmetric int8 weights (MatMul weights "
    "rounded GPTQ-style on training windows) dequantised at run time, fp32 arithmetic "
    "(dynamic int8 missed the accuracy gate)",
}


def eligible_ends(rec: data.Recording, stride: int, offset: int = 0) -> np.ndarray:
    """Window ends with a full context where the engine would forecast hr and hr follows."""
    n = len(rec)
    ends = honest.window_ends(n, stride, offset)
    if len(ends) == 0:
        return ends
    m = rec.mask[:, HR]
    cs = np.concatenate([[0], np.cumsum(m)])
    recent = cs[ends + 1] - cs[np.maximum(ends + 1 - spec.IMPUTE_WINDOW, 0)] > 0
    seen = cs[ends + 1] - cs[ends + 1 - spec.CONTEXT] >= spec.CONTEXT // 4
    ahead = cs[ends + 1 + spec.HORIZON] - cs[ends + 1] > 0
    return ends[recent & seen & ahead]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=realdata.default_data_dir())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out", type=Path, default=None, help="default models/ (--quick: /tmp/edgetwin-quick)"
    )
    ap.add_argument("--quick", action="store_true", help="tiny run to check the plumbing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fc-iters", type=int, default=2000)
    ap.add_argument("--imp-iters", type=int, default=2000)
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )
    if args.data is None:
        ap.error("no data directory: pass --data DIR (holding rr/*.csv.gz)")
    if args.out is None:  # a plumbing check must never overwrite the shipped models
        args.out = Path("/tmp/edgetwin-quick") if args.quick else ROOT / "models"

    import torch

    torch.set_num_threads(args.threads)
    t_start = time.monotonic()
    imp_iters, fc_iters = (100, 150) if args.quick else (args.imp_iters, args.fc_iters)
    commit = git_commit()

    # ---- people and their split
    names = sorted(realdata.person_files(args.data))
    split = realdata.make_split(names, args.seed)
    if args.quick:
        split = {k: v[:: max(1, len(v) // (6 if k == "train" else 3))] for k, v in split.items()}
    people = realdata.load_people(args.data, sorted(p for v in split.values() for p in v))
    recs = {k: [people[p][0] for p in v] for k, v in split.items()}
    sim = data.simulated_people(args.seed, *SIM)
    n_sv = max(1, len(sim) // 6)
    sim_train, sim_val, sim_test = sim[: -2 * n_sv], sim[-2 * n_sv : -n_sv], sim[-n_sv:]
    train_recs = recs["train"] + sim_train
    prior = windows.fit_prior(train_recs)
    _LOGGER.info(
        "data: real %s people, sim %d/%d/%d (%.0fs)",
        {k: len(v) for k, v in recs.items()},
        len(sim_train),
        len(sim_val),
        len(sim_test),
        time.monotonic() - t_start,
    )

    # ---- imputer: real training people (every 6th window) and simulated ones (every 2nd)
    zs, ms, ws = [], [], []
    for rec in train_recs:
        stride = 6 if rec.kind == "real" else 2
        z, m = windows.imputer_windows(
            rec, prior, np.arange(spec.IMPUTE_WINDOW - 1, len(rec), stride)
        )
        keep = m.reshape(len(m), -1).any(axis=1)
        zs.append(z[keep]), ms.append(m[keep])
        ws.append(np.full(int(keep.sum()), 1.0))
    z_all, m_all, w_all = np.concatenate(zs), np.concatenate(ms), np.concatenate(ws)
    del zs, ms, ws
    _LOGGER.info("imputer: %d training windows", len(z_all))
    gen = training.train_gain(z_all, m_all, w_all, args.seed, iters=imp_iters)

    def torch_g(feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(feeds["z"]), 8192):
                out.append(
                    gen(
                        torch.from_numpy(feeds["z"][i : i + 8192]),
                        torch.from_numpy(feeds["mask"][i : i + 8192]),
                    ).numpy()
                )
        return np.concatenate(out)

    # which features the imputer leaves to interpolation: decided on the validation people
    # (hr, rmssd) and simulated validation people (the rest), spans removed on purpose
    imp_val = {
        "real": evaluate.eval_imputer(
            recs["val"], prior, lambda z, m: impute(torch_g, z, m), args.seed + 21, stride=53
        ),
        "sim": evaluate.eval_imputer(
            sim_val, prior, lambda z, m: impute(torch_g, z, m), args.seed + 21
        ),
    }
    interpolate: list[str] = []
    for feat in spec.FEATURES:
        e = imp_val["real"]["per_feature"].get(feat) or imp_val["sim"]["per_feature"].get(feat)
        if e is not None and e["gain"] >= e["linear"]:
            interpolate.append(feat)
    interp_idx = tuple(spec.FEATURES.index(f) for f in interpolate)
    _LOGGER.info("imputer: left to interpolation (lost to it on validation): %s", interpolate)

    def torch_impute(z: np.ndarray, m: np.ndarray) -> np.ndarray:
        return impute(torch_g, z, m, interp_idx)

    # ---- forecaster samples: contexts filled the way the engine fills them
    slim = ("ctx_raw", "obs_mask", "ctx_raw_obs", "y_raw")

    def samples(
        rs: list[data.Recording], impute, stride_real: int, stride_sim: int, keep_all: bool = False
    ) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
        parts = []
        for rec in rs:
            w = windows.fill_contexts(rec, prior, impute)
            if rec.kind == "real":
                s = windows.forecaster_samples(
                    rec, prior, w, MIN_CONTEXT, ends=eligible_ends(rec, stride_real)
                )
            else:
                s = windows.forecaster_samples(
                    rec, prior, w, MIN_CONTEXT, stride=stride_sim, full_only=keep_all
                )
            del w
            if not s:
                continue
            if not keep_all:
                s = {k: v for k, v in s.items() if k not in slim}
            s["real"] = np.full(len(s["x"]), rec.kind == "real")
            s["person"] = np.full(len(s["x"]), rec.name)
            parts.append(s)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    tr = samples(train_recs, torch_impute, 4 if args.quick else 20, 3)
    real_w = 4.0  # real windows count 4x: they are who the twin serves
    weight = np.where(tr["real"], real_w, 1.0)
    _LOGGER.info(
        "forecaster: %d training windows (%d real, %.0f%% of the weight)",
        len(tr["x"]),
        tr["real"].sum(),
        100 * weight[tr["real"]].sum() / weight.sum(),
    )
    va = samples(recs["val"] + sim_val, torch_impute, 6 if args.quick else 30, 3, keep_all=True)
    va_real = va["real"]

    def torch_quantiles(net, x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
        h, k, q = net.out_shape
        out = []
        with torch.no_grad():
            for i in range(0, len(x), 2048):
                xt = torch.from_numpy(np.ascontiguousarray(x[i : i + 2048].transpose(1, 0, 2)))
                out.append(net(xt)[0][0].numpy().reshape(-1, h, k, q))
        return np.concatenate(out)

    def raw_quantiles(q: np.ndarray, s: dict[str, np.ndarray]) -> np.ndarray:
        q = q * s["scale"][:, None, :, None] + s["anchor"][:, None, :, None]
        return q * s["std"][:, None, TIDX, None] + s["mean"][:, None, TIDX, None]

    def val_hr_mae(net) -> float:  # type: ignore[no-untyped-def]
        sub = {k: v[va_real] for k, v in va.items()}
        med = raw_quantiles(torch_quantiles(net, sub["x"]), sub)[:, :, K_HR, 1]
        ym = sub["y_mask"][:, :, K_HR]
        return float(honest.abs_errors(med, sub["y_raw"][:, :, K_HR], ym).sum() / ym.sum())

    net, history = training.train_forecaster(
        tr["x"],
        tr["y"],
        tr["y_mask"],
        weight,
        tr["scale"],
        args.seed,
        iters=fc_iters,
        min_context=MIN_CONTEXT,
        validate=val_hr_mae,
        every=50 if args.quick else 250,
    )
    best_it, best_val = min(history, key=lambda r: r[1])
    _LOGGER.info("checkpoint chosen on validation: iteration %d (hr MAE %.3f)", best_it, best_val)

    # ---- band: split-conformal (CQR) widths per target and horizon, on validation windows
    qv = torch_quantiles(net, va["x"])
    conformal = {}
    with torch.no_grad():
        bias = net.head.bias.view(*net.out_shape)
        for j, tname in enumerate(spec.TARGETS):
            use = va_real if va["y_mask"][va_real][:, :, j].sum() >= 500 else ~va_real
            ym = va["y_mask"][use][:, :, j]
            y = va["y"][use][:, :, j]
            lo, hi = qv[use][:, :, j, 0], qv[use][:, :, j, -1]
            widths = []
            for h in range(spec.HORIZON):
                sc = np.maximum(lo[:, h] - y[:, h], y[:, h] - hi[:, h])[ym[:, h]]
                if len(sc) < 50:
                    widths.append(0.0)
                    continue
                level = min(1.0, np.ceil((len(sc) + 1) * 0.95) / len(sc))
                widths.append(float(np.quantile(sc, level, method="higher")))
            wt = torch.tensor(widths)
            bias[:, j, 0] -= wt
            bias[:, j, -1] += wt
            conformal[tname] = {
                "source": "real validation people" if use is va_real else "simulated validation",
                "windows": int(ym.any(axis=1).sum()),
                "width_per_step": [round(w, 4) for w in widths],
            }
    _LOGGER.info("conformal widths: %s", {k: v["width_per_step"][-1] for k, v in conformal.items()})

    # ---- ridge AR baseline (train people), penalty chosen on validation
    tr_real = samples(recs["train"], torch_impute, 8 if args.quick else 40, 3, keep_all=True)
    pers_tr = honest.simple_baselines(tr_real["ctx_raw_obs"][:, :, HR])["persistence"]
    v_sub = {k: v[va_real] for k, v in va.items()}
    pers_va = honest.simple_baselines(v_sub["ctx_raw_obs"][:, :, HR])["persistence"]
    best_alpha, best_err, ridge_w = 0.0, np.inf, None
    for alpha in (10.0, 100.0, 1000.0, 10000.0, 100000.0):
        w = honest.fit_ridge_ar(
            tr_real["ctx_raw"][:, :, HR],
            pers_tr,
            np.nan_to_num(tr_real["y_raw"][:, :, K_HR]),
            tr_real["y_mask"][:, :, K_HR],
            alpha,
        )
        p = honest.ridge_ar(v_sub["ctx_raw"][:, :, HR], pers_va, w)
        ym = v_sub["y_mask"][:, :, K_HR]
        err = honest.abs_errors(p, v_sub["y_raw"][:, :, K_HR], ym).sum() / ym.sum()
        if err < best_err:
            best_alpha, best_err, ridge_w = alpha, err, w
    assert ridge_w is not None
    del tr_real
    _LOGGER.info("ridge AR(12) baseline: alpha %.0f (val hr MAE %.3f)", best_alpha, best_err)

    # ---- held-out gate windows (int8 vs fp32): validation people and simulated validation
    gate_z, _, gate_m, _ = evaluate.spans_removed(
        recs["val"][:4] + sim_val, prior, args.seed + 11, stride=97
    )
    gate_z = np.where(gate_m, gate_z, 0).astype(np.float32)
    rng_g = np.random.default_rng(args.seed + 3)
    pick_g = rng_g.choice(len(va["x"]), size=min(512, len(va["x"])), replace=False)
    gate_x, gate_scale = va["x"][pick_g], va["scale"][pick_g]

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
    del tr, z_all, m_all

    # ---- export, optimise, quantise (dynamic int8 first; weight-only int8 if it misses the gate)
    schemes: dict[str, str] = {}
    gates: dict[str, dict] = {}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        export.export_imputer(gen, tmp / "imputer.onnx")
        export.export_forecaster(net, tmp / "forecaster.onnx")
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
                    # the skip path's matrix gets one scale per input row (per output column
                    # missed the gate: its last step's weight ~0.8 set a coarse step for the
                    # ~0.05 weights of the older steps)
                    per_row = (
                        (export.node_input(raw, "/skip/MatMul", 1),) if name == "forecaster" else ()
                    )
                    export.quantize_weights_int8(
                        raw, q, excl_inits, calib[name], per_row_inits=per_row
                    )
                    if name == "imputer":
                        # MatMulNBits (int8 weights, dequantised inside the GEMM) instead of a
                        # DequantizeLinear of every weight on every call
                        export.optimize_offline(q, int8, disabled=("MatMulAddFusion",))
                    else:
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

    imp8 = evaluate.onnx_imputer(files["imputer"]["int8"], interp_idx)
    gain8 = evaluate.onnx_imputer(files["imputer"]["int8"])
    fc8 = evaluate.onnx_forecaster(files["forecaster"]["int8"])
    metrics: dict = {
        "forecaster": {},
        "imputer": {},
        "validation": {
            "checkpoints": history,
            "chosen_iteration": best_it,
            "ridge_alpha": best_alpha,
            "conformal": conformal,
            "imputer": imp_val,
            "interpolate": interpolate,
        },
    }
    metrics["quantization"] = {
        "imputer": {"scheme": schemes["imputer"], **gates["imputer"]},
        "forecaster": {"scheme": schemes["forecaster"], **gates["forecaster"]},
        "passed": bool(gates["imputer"]["passed"] and gates["forecaster"]["passed"]),
    }

    # ---- the test people, scored once with the shipped int8 files
    _LOGGER.info("scoring the test people (commit %s)", commit)
    rng_b = np.random.default_rng(args.seed + 99)
    per_person: dict[str, dict] = {}
    pooled_blocks = []
    rmssd_blocks = []
    held: dict[str, list[np.ndarray]] = {k: [] for k in ("ctx", "obs", "mean", "std", "y", "ym")}
    for rec in recs["test"]:
        s = samples([rec], imp8, 6, 1, keep_all=True)
        q, _ = fc8(s["x"])
        raw = raw_quantiles(q, s)
        y, ym = s["y_raw"][:, :, K_HR], s["y_mask"][:, :, K_HR]
        base = honest.simple_baselines(s["ctx_raw_obs"][:, :, HR])
        preds = {"model": raw[:, :, K_HR, 1], **base}
        preds["ridge_ar12"] = honest.ridge_ar(s["ctx_raw"][:, :, HR], base["persistence"], ridge_w)
        err = {k: honest.abs_errors(v, y, ym) for k, v in preds.items()}
        sums, cnt = honest.block_sums(s["ends"], err, ym)
        pooled_blocks.append((sums, cnt))
        r = honest.bootstrap([(sums, cnt)], "model", rng_b)
        r["coverage"] = honest.coverage(raw[:, :, K_HR, 0], raw[:, :, K_HR, -1], y, ym)
        r["windows"] = len(y)
        r["hours"] = round(len(rec) * spec.STEP_S / 3600, 1)
        per_person[rec.name] = r
        # rmssd where the recording gives it
        k_rm = spec.TARGETS.index("rmssd")
        rm_y, rm_m = s["y_raw"][:, :, k_rm], s["y_mask"][:, :, k_rm]
        rb = honest.simple_baselines(s["ctx_raw_obs"][:, :, spec.FEATURES.index("rmssd")])
        rerr = {"model": honest.abs_errors(raw[:, :, k_rm, 1], rm_y, rm_m)}
        rerr.update({k: honest.abs_errors(v, rm_y, rm_m) for k, v in rb.items()})
        rs, rc = honest.block_sums(s["ends"], rerr, rm_m)
        rs["coverage_in"] = np.bincount(
            np.unique((s["ends"] * spec.STEP_S // honest.BLOCK_S).astype(int), return_inverse=True)[
                1
            ],
            weights=((rm_y >= raw[:, :, k_rm, 0]) & (rm_y <= raw[:, :, k_rm, -1]) & rm_m).sum(1),
        )
        rmssd_blocks.append((rs, rc))
        # stored held-out windows for the shipped-model test: 40 per person, spread in time
        pick = np.linspace(0, len(y) - 1, min(40, len(y))).astype(int)
        held["ctx"].append(s["ctx_raw"][pick].astype(np.float32))
        held["obs"].append(s["obs_mask"][pick])
        held["mean"].append(s["mean"][pick])
        held["std"].append(s["std"][pick])
        held["y"].append(s["y_raw"][pick].astype(np.float32))
        held["ym"].append(s["y_mask"][pick])
        _LOGGER.info(
            "test %s: model %.2f persistence %.2f ratio %.3f [%.3f, %.3f] coverage %.3f",
            rec.name,
            r["mae"]["model"][0],
            r["mae"]["persistence"][0],
            *r["ratio_to"]["persistence"],
            r["coverage"],
        )
    pooled = honest.bootstrap(pooled_blocks, "model", rng_b)
    rm_pooled = honest.bootstrap(
        [({k: v for k, v in s_.items() if k != "coverage_in"}, c) for s_, c in rmssd_blocks],
        "model",
        rng_b,
    )
    rm_pooled["coverage"] = float(
        sum(s_["coverage_in"].sum() for s_, _ in rmssd_blocks)
        / sum(c.sum() for _, c in rmssd_blocks)
    )
    metrics["forecaster"]["test_real"] = {
        "hr": {"pooled": pooled, "per_person": per_person},
        "rmssd": {"pooled": rm_pooled},
        "people": len(recs["test"]),
        "stride_steps": 6,
    }
    # simulated test people: the targets the RR recordings do not have
    sim_s = samples(sim_test, imp8, 1, 1, keep_all=True)
    metrics["forecaster"]["test_sim"] = evaluate.eval_forecaster(sim_s, fc8)
    del sim_s
    # imputer: spans removed on purpose from the real test people and the simulated ones
    # ("gain" is what the runtime does: GAIN, or interpolation where it lost on validation;
    # "gain_only" is the GAIN output everywhere)
    only = {"gain_only": gain8}
    metrics["imputer"]["test_real"] = evaluate.eval_imputer(
        recs["test"], prior, imp8, args.seed + 7, stride=37, extra=only
    )
    # MMASH's real strap dropouts, laid over test people whose Holter saw every beat
    mmash = [r for r in recs["test"] + recs["val"] if realdata.dataset_of(r.name) == "mmash"]
    holter = [r for r in recs["test"] if realdata.dataset_of(r.name) != "mmash"]
    metrics["imputer"]["test_real_dropouts"] = evaluate.eval_imputer(
        [],
        prior,
        imp8,
        0,
        extra=only,
        windows=evaluate.real_dropouts(holter, mmash, prior, args.seed + 8),
    )
    metrics["imputer"]["test_sim"] = evaluate.eval_imputer(
        sim_test, prior, imp8, args.seed + 7, extra=only
    )

    np.savez_compressed(
        out / "heldout_windows.npz",
        forecaster_x=gate_x[:64],
        forecaster_scale=gate_scale[:64],
        imputer_z=gate_z[:64],
        imputer_mask=gate_m[:64],
    )
    np.savez_compressed(
        out / "heldout_test.npz",
        ctx=np.concatenate(held["ctx"]),
        obs=np.concatenate(held["obs"]),
        mean=np.concatenate(held["mean"]),
        std=np.concatenate(held["std"]),
        y=np.concatenate(held["y"]),
        y_mask=np.concatenate(held["ym"]),
    )
    realdata.dump_split(split, out / "split.json", args.seed)
    elapsed = time.monotonic() - t_start
    metrics["scored_at_commit"] = commit
    lines = summarize(metrics, split, commit, elapsed)
    for line in lines[:40]:
        _LOGGER.info("%s", line)
    write_manifest(out, files, prior, metrics, args, split, elapsed)
    (out / "metrics.md").write_text("\n".join(lines) + "\n")
    _LOGGER.info("done in %.0fs: %s", elapsed, out)
    if not metrics["quantization"]["passed"]:
        _LOGGER.error("int8 gate failed: %s", metrics["quantization"])
        return 1
    return 0


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "scripts/train_models.py", "scripts/modeling"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + ("+uncommitted-training-code" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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


def write_manifest(out, files, prior, metrics, args, split, elapsed) -> None:  # type: ignore[no-untyped-def]
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
            "interpolate": metrics["validation"]["interpolate"],
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
            "+ linear quantile head on [context vector, h_T] + linear skip path on the last "
            f"{spec.SKIP_STEPS} steps of x (ridge-initialised); band widened by split-conformal "
            "(CQR) widths from the validation people",
        }
    )
    data_dir = Path(args.data)
    manifest = {
        "format": 1,
        "feature_schema_version": spec.FEATURE_SCHEMA_VERSION,
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
            "data_dir": str(data_dir),
            "split": "split.json",
            "people": {k: len(v) for k, v in split.items()},
            "files": realdata.file_listing(data_dir, sorted(p for v in split.values() for p in v)),
            "simulated": {"people": SIM[0], "hours_each": SIM[1], "source": "edgetwin simulator"},
            "seconds": round(elapsed, 1),
            "scored_at_commit": metrics["scored_at_commit"],
        },
        "metrics": metrics,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def _ci(v: list[float], fmt: str = "{:.3f}") -> str:
    return (fmt + " [" + fmt + ", " + fmt + "]").format(*v)


def summarize(metrics: dict, split: dict, commit: str, elapsed: float) -> list[str]:
    t = metrics["forecaster"]["test_real"]
    hr = t["hr"]
    lines = [
        "# Test-split results",
        "",
        f"Scored once by `scripts/train` at commit `{commit}` ({elapsed / 60:.0f} min run); "
        f"split by person (`split.json`): {len(split['train'])} train, {len(split['val'])} "
        f"validation, {len(split['test'])} test people. Windows every {t['stride_steps']} steps "
        "(30 s) with a full 5-min context; MAE over the 12-step (1 min) horizon on observed "
        "targets; 95 % CIs from a block bootstrap (30-min blocks, resampled within each person, "
        f"{honest.N_BOOT} replicates). All methods on identical windows and targets.",
        "",
        "## Heart rate (bpm), pooled over the test people",
        "",
        "| method | MAE [95 % CI] | model / method [95 % CI] |",
        "| --- | --- | --- |",
    ]
    p = hr["pooled"]
    for k, v in p["mae"].items():
        ratio = "" if k == "model" else _ci(p["ratio_to"][k])
        lines.append(f"| {k} | {_ci(v, '{:.2f}')} | {ratio} |")
    best = min(p["mae"]["persistence"][0], p["mae"]["context_mean"][0])
    lines += [
        "",
        f"Model / better of persistence and context mean: {p['mae']['model'][0] / best:.3f} "
        "(target <= 0.9).",
        "",
        "## Heart rate per test person",
        "",
        "| person | hours | windows | model MAE [CI] | persistence | context mean | ridge AR | "
        "model/persistence [CI] | model/ridge AR [CI] | band coverage |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in hr["per_person"].items():
        lines.append(
            f"| {name} | {r['hours']} | {r['windows']} | {_ci(r['mae']['model'], '{:.2f}')} | "
            f"{r['mae']['persistence'][0]:.2f} | {r['mae']['context_mean'][0]:.2f} | "
            f"{r['mae']['ridge_ar12'][0]:.2f} | {_ci(r['ratio_to']['persistence'])} | "
            f"{_ci(r['ratio_to']['ridge_ar12'])} | {r['coverage']:.3f} |"
        )
    worse = [n for n, r in hr["per_person"].items() if r["ratio_to"]["persistence"][1] > 1.0]
    lose_ridge = [n for n, r in hr["per_person"].items() if r["ratio_to"]["ridge_ar12"][0] > 1.0]
    cov_out = [n for n, r in hr["per_person"].items() if not 0.93 <= r["coverage"] <= 0.97]
    lines += [
        "",
        "Where the model loses: worse than persistence (CI lower bound > 1): "
        + (", ".join(worse) or "nobody")
        + "; worse than the ridge AR baseline (point estimate): "
        + (", ".join(lose_ridge) or "nobody")
        + "; band coverage outside 93-97 %: "
        + (", ".join(cov_out) or "nobody")
        + ".",
        "",
        "## RMSSD (ms), pooled over the test people",
        "",
        "| method | MAE [95 % CI] | model / method [95 % CI] |",
        "| --- | --- | --- |",
    ]
    rp = t["rmssd"]["pooled"]
    for k, v in rp["mae"].items():
        ratio = "" if k == "model" else _ci(rp["ratio_to"][k])
        lines.append(f"| {k} | {_ci(v, '{:.2f}')} | {ratio} |")
    lines += ["", f"RMSSD band coverage: {rp['coverage']:.3f}", ""]
    sim = metrics["forecaster"]["test_sim"]
    lines += [
        "## Simulated test people (targets the RR recordings do not have)",
        "",
        "| target | model | persistence | context mean | linear trend | band coverage |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for tname, e in sim["targets"].items():
        lines.append(
            f"| {tname} | {e['model']['mae']:.3f} | {e['persistence']['mae']:.3f} | "
            f"{e['context_mean']['mae']:.3f} | {e['linear_trend']['mae']:.3f} | "
            f"{e['band_coverage']:.2f} |"
        )
    lines += [
        "",
        "## Imputer: RMSE on hidden cells (feature units)",
        "",
        "test_real: spans removed on purpose from the test people; test_real_dropouts: MMASH's "
        "real strap dropout patterns laid over test Holter windows whose beats were all seen; "
        "runtime fill = GAIN except features left to interpolation ("
        + (", ".join(metrics["validation"]["interpolate"]) or "none")
        + ", chosen on validation).",
        "",
    ]
    for label, m in metrics["imputer"].items():
        lines.append(f"**{label}** ({m['windows']} windows, {m['cells']} hidden cells)")
        lines.append("")
        lines.append("| feature | cells | runtime fill | GAIN alone | LOCF | linear |")
        lines.append("| --- | --- | --- | --- | --- | --- |")
        for feat, e in m["per_feature"].items():
            lines.append(
                f"| {feat} | {e['cells']} | {e['gain']:.3f} | {e.get('gain_only', e['gain']):.3f} "
                f"| {e['locf']:.3f} | {e['linear']:.3f} |"
            )
        lines.append("")
    v = metrics["validation"]
    lines += [
        "## Choices made on validation",
        "",
        f"- checkpoint: iteration {v['chosen_iteration']} of "
        + ", ".join(f"{i}: {s:.3f}" for i, s in v["checkpoints"])
        + " (validation hr MAE, bpm)",
        f"- ridge AR(12) baseline penalty: {v['ridge_alpha']:g}",
        "- conformal band widths (normalised units, last horizon step): "
        + ", ".join(
            f"{k} {c['width_per_step'][-1]:.3f} ({c['source']})" for k, c in v["conformal"].items()
        ),
        "",
    ]
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
