"""ONNX export, offline graph optimisation and int8 quantisation."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from .nets import Forecaster, GainGenerator
from .spec import CONTEXT, IMPUTE_WINDOW, N_FEATURES

_LOGGER = logging.getLogger(__name__)
OPSET = 17


def export_imputer(gen: GainGenerator, path: Path) -> None:
    """Legacy (TorchScript) exporter; batch axis dynamic."""
    dummy = torch.zeros(1, IMPUTE_WINDOW * N_FEATURES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            gen,
            (dummy, dummy),
            str(path),
            input_names=["z", "mask"],
            output_names=["g"],
            dynamic_axes={"z": {0: "batch"}, "mask": {0: "batch"}, "g": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    _gemm_to_matmul(path)


def export_forecaster(net: Forecaster, path: Path) -> None:
    """Legacy exporter: nn.LSTM becomes one ONNX LSTM op (the dynamo path unrolls it)."""
    dummy = torch.zeros(CONTEXT, 1, 2 * N_FEATURES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (dummy,),
            str(path),
            input_names=["x"],
            output_names=["quantiles", "attention"],
            dynamic_axes={"x": {1: "batch"}, "quantiles": {1: "batch"}, "attention": {1: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("LSTM") == 1, f"expected one LSTM op, got {ops}"
    _fold_forecaster(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _fold_forecaster(model: onnx.ModelProto) -> None:
    """Fold the exporter's tiny ops out of the forecaster graph.

    At batch 1 every op costs about a microsecond of dispatch, comparable to
    the LSTM's arithmetic, so: drop the zero initial states (the LSTM op's
    default) and the Shape/Gather/Concat chain that builds them; keep the
    LSTM's 4-D output ``(T, 1, B, H)`` instead of squeezing it; and split the
    head's Concat+MatMul into two MatMuls added together. Outputs become
    ``quantiles (1, 1, B, O)`` and ``attention (T, 1, B, 1)``.
    """
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    lstm = next(n for n in g.node if n.op_type == "LSTM")
    del lstm.input[4:]  # sequence_lens, initial_h, initial_c -> defaults (zeros)
    y, y_h = lstm.output[0], lstm.output[1]
    squeeze = next(n for n in g.node if n.op_type == "Squeeze" and n.input[0] == y)
    for n in g.node:
        for i, name in enumerate(n.input):
            if name == squeeze.output[0]:
                n.input[i] = y
    pos = inits["pos_bias"]
    arr = numpy_helper.to_array(pos)
    pos.CopyFrom(numpy_helper.from_array(arr.reshape(arr.shape[0], 1, 1, 1), "pos_bias"))
    concat = next(n for n in g.node if n.op_type == "Concat" and y_h in n.input)
    ctx = concat.input[0]
    head_mm = next(n for n in g.node if n.op_type == "MatMul" and n.input[0] == concat.output[0])
    head_add = next(n for n in g.node if n.op_type == "Add" and head_mm.output[0] in n.input)
    w = numpy_helper.to_array(inits[head_mm.input[1]])
    hidden = w.shape[0] // 2
    g.initializer.extend(
        [
            numpy_helper.from_array(np.ascontiguousarray(w[:hidden]), "head_w_ctx"),
            numpy_helper.from_array(np.ascontiguousarray(w[hidden:]), "head_w_h"),
        ]
    )
    bias = next(i for i in head_add.input if i != head_mm.output[0])
    new_tail = [
        helper.make_node("MatMul", [ctx, "head_w_ctx"], ["head_ctx"], name="head_ctx_MatMul"),
        helper.make_node("MatMul", [y_h, "head_w_h"], ["head_h"], name="head_h_MatMul"),
        helper.make_node("Add", ["head_ctx", "head_h"], ["head_sum"], name="head_sum_Add"),
        # the skip path's Add (if any) still consumes this name and makes "quantiles"
        helper.make_node("Add", ["head_sum", bias], [head_add.output[0]], name="head_bias_Add"),
    ]
    # the new tail takes the head's place, so a consumer of its output (the skip Add) follows it
    nodes: list[onnx.NodeProto] = []
    for n in g.node:
        if n is head_add:
            nodes.extend(new_tail)
        elif n not in (squeeze, concat, head_mm):
            nodes.append(n)
    # drop nodes nothing consumes (the initial-state chain, Constants)
    live = {o.name for o in g.output}
    keep: list[onnx.NodeProto] = []
    for n in reversed(nodes):
        if any(o in live for o in n.output):
            keep.append(n)
            live.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(keep))
    used = {i for n in g.node for i in n.input}
    for name in [i.name for i in g.initializer if i.name not in used]:
        g.initializer.remove(next(i for i in g.initializer if i.name == name))
    del g.value_info[:]
    for out in g.output:  # (a, B, c) -> (a, 1, B, c)
        dims = list(out.type.tensor_type.shape.dim)
        one = onnx.TensorShapeProto.Dimension(dim_value=1)
        del out.type.tensor_type.shape.dim[:]
        out.type.tensor_type.shape.dim.extend([dims[0], one, dims[1], dims[2]])


def _gemm_to_matmul(path: Path) -> None:
    """Rewrite Gemm(transB=1) as MatMul+Add: onnxruntime's dynamic int8 covers MatMul, not Gemm."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
            nodes.append(node)
            continue
        a, b, c = node.input
        w = numpy_helper.to_array(inits[b])
        if attrs.get("transB", 0):
            w = w.T
        inits[b].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w), b))
        mm_out = node.output[0] + "_mm"
        nodes.append(helper.make_node("MatMul", [a, b], [mm_out], name=node.name + "_MatMul"))
        nodes.append(
            helper.make_node("Add", [mm_out, c], [node.output[0]], name=node.name + "_Add")
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def optimize_offline(src: Path, dst: Path, disabled: tuple[str, ...] = ()) -> None:
    """Run onnxruntime's graph optimiser once and save the result (portable 'extended' level)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(dst)
    so.intra_op_num_threads = 1
    ort.InferenceSession(
        str(src), so, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled)
    )


def quantize_int8(src: Path, dst: Path, exclude_nodes: list[str] | None = None) -> None:
    """Dynamic int8: LSTM weights per channel, MatMul weights per tensor; activations per call.

    Two passes because onnxruntime's ``per_channel`` switch is global: per-channel
    scales matter for the LSTM (its rows differ a lot in range, and its error
    compounds over 60 steps) but for the small heads they would cost more bytes
    than the int8 weights save.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    mid = dst.with_suffix(".mm.onnx")
    quantize_dynamic(
        str(src),
        str(mid),
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QInt8,
        per_channel=False,
        nodes_to_exclude=exclude_nodes or [],
    )
    quantize_dynamic(
        str(mid),
        str(dst),
        op_types_to_quantize=["LSTM"],
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    mid.unlink()


def node_input(path: Path, node_name: str, index: int) -> str:
    return next(n.input[index] for n in onnx.load(str(path)).graph.node if n.name == node_name)


def node_names(path: Path, op_type: str) -> list[str]:
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == op_type]


def op_summary(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def quantize_weights_int8(
    src: Path,
    dst: Path,
    exclude_inits: tuple[str, ...] = (),
    calib: dict[str, np.ndarray] | None = None,
    matmul_per_tensor: bool = False,
    per_tensor_inits: tuple[str, ...] = (),
    per_row_inits: tuple[str, ...] = (),
) -> None:
    """Weight-only int8: per-output-channel symmetric int8 weights + DequantizeLinear, fp32 math.

    For LSTM W/R and MatMul weights. The file shrinks ~4x like dynamic int8, but
    activations stay fp32, so the error is the weight rounding alone (the
    fallback when dynamic int8 misses the accuracy gate; the manifest says which).
    """
    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    targets: dict[str, int] = {}
    for node in g.node:
        if node.op_type == "LSTM":
            targets[node.input[1]] = 1  # (dirs, 4H, in): per gate row
            targets[node.input[2]] = 1
        elif node.op_type in ("MatMul", "Gemm") and node.input[1] in inits:
            targets[node.input[1]] = 1 if node.op_type == "MatMul" else 0
    for name in per_row_inits:
        # one scale per input row: a matrix whose rows differ in size (the skip path's last
        # step weighs ~0.8, older steps ~0.05) keeps the small rows' resolution
        targets[name] = 0
    activations = _matmul_inputs(model, calib) if calib is not None else {}
    new_nodes = []
    for name, axis in targets.items():
        if name in exclude_inits or name not in inits:
            continue
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        red = tuple(i for i in range(w.ndim) if i != axis)
        scale = np.maximum(np.abs(w).max(axis=red), 1e-12) / 127.0
        per_tensor = (matmul_per_tensor and w.ndim == 2) or name in per_tensor_inits
        if per_tensor:  # one scale: 4 bytes instead of one per output column
            scale = np.full_like(scale, np.abs(w).max() / 127.0)
        shape = [1] * w.ndim
        shape[axis] = -1
        if calib is not None and name in activations and w.ndim == 2 and axis == 1:
            q = _gptq_rows(w, scale, activations[name])
        elif calib is not None and name in activations and w.ndim == 3:
            # LSTM W/R (1, 4H, in): GPTQ on the transposed (in, 4H) matrix
            q = _gptq_rows(w[0].T, scale, activations[name]).T[None]
        else:
            q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        g.initializer.remove(inits[name])
        g.initializer.extend(
            [
                numpy_helper.from_array(q, name + "_q"),
                numpy_helper.from_array(
                    (scale[:1].reshape(()) if per_tensor else scale).astype(np.float32),
                    name + "_scale",
                ),
            ]
        )
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [name + "_q", name + "_scale"],  # symmetric: zero point 0 (the default)
                [name],
                name=name + "_DQ",
                axis=axis,
            )
        )
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def compact(path: Path) -> None:
    """Short tensor/node names and no all-zero optional zero points: a smaller file, same graph.

    Exporter and quantiser names ("onnx::LSTM_117_quantized") cost more bytes
    than a tiny model's biases. Graph inputs/outputs keep their names.
    """
    model = onnx.load(str(path))
    g = model.graph
    keep = {v.name for v in (*g.input, *g.output)}
    inits = {i.name: i for i in g.initializer}
    for node in g.node:  # DynamicQuantizeMatMul(A, B, b_scale, b_zero_point?, bias?)
        if (
            node.op_type == "DynamicQuantizeMatMul"
            and len(node.input) >= 4
            and node.input[3] in inits
            and not numpy_helper.to_array(inits[node.input[3]]).any()
        ):
            node.input[3] = ""
            while node.input and node.input[-1] == "":
                del node.input[-1]
    used = {i for n in g.node for i in n.input if i}
    for name in [n for n in inits if n not in used]:
        g.initializer.remove(inits[name])
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for init in g.initializer:
        init.name = short(init.name)
    for i, node in enumerate(g.node):
        node.name = f"n{i}"
        for j, name in enumerate(node.input):
            node.input[j] = short(name)
        for j, name in enumerate(node.output):
            node.output[j] = short(name)
        node.doc_string = ""
    del g.value_info[:]
    model.doc_string = ""
    model.producer_name = "edgetwin"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _matmul_inputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Calibration inputs (rows, K) of each MatMul with a constant weight, by weight name."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inits = {i.name for i in probe.graph.initializer}
    wanted = {
        n.input[1]: n.input[0]
        for n in probe.graph.node
        if n.op_type == "MatMul" and n.input[1] in inits
    }
    for n in probe.graph.node:
        if n.op_type == "LSTM":  # W sees the inputs x, R the hidden states y
            wanted[n.input[1]] = n.input[0]
            wanted[n.input[2]] = n.output[0]
    have = {o.name for o in probe.graph.output}
    for act in set(wanted.values()) - have:
        probe.graph.output.append(helper.make_tensor_value_info(act, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, feeds), strict=True))
    return {w: outs[a].reshape(-1, outs[a].shape[-1]).astype(np.float64) for w, a in wanted.items()}


def _gptq_rows(w: np.ndarray, scale: np.ndarray, x: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """GPTQ rounding of a MatMul weight (K, N), per-column scales, calibrated on inputs x (S, K).

    Rows are rounded in order and each row's rounding error is pushed onto the
    rows not yet rounded through the inverse Hessian of the calibration inputs,
    so the *output* error, not the weight error, is what gets minimised
    (Frantar et al., ICLR 2023).
    """
    k = w.shape[0]
    h = x.T @ x / len(x)
    h += damp * np.mean(np.diag(h)) * np.eye(k)
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper
    work = w.astype(np.float64).copy()
    q = np.zeros_like(w, dtype=np.int8)
    for i in range(k):
        row = work[i]
        qi = np.clip(np.round(row / scale), -127, 127)
        q[i] = qi.astype(np.int8)
        err = (row - qi * scale) / hinv[i, i]
        work[i + 1 :] -= np.outer(hinv[i, i + 1 :], err)
    return q
