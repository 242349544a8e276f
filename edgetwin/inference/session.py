"""onnxruntime sessions tuned for small CPUs.

One intra-op thread by default: the models are tiny (tens of microseconds per
window), so a thread pool costs more in wake-ups than it saves, and the daemon
must leave the Pi's other cores to the sources. Sequential execution, full
graph optimisation, and the sha256-checked bytes only — never a path that
could change between the check and the load.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from edgetwin.errors import DataCorrupt, UsageError

if TYPE_CHECKING:
    from edgetwin.inference.registry import ModelFile

_LOGGER = logging.getLogger(__name__)


def session_options(threads: int = 1) -> Any:
    """SessionOptions: ``threads`` intra-op, 1 inter-op, sequential, ORT_ENABLE_ALL."""
    import onnxruntime as ort

    if threads < 1:
        raise UsageError(f"inference threads must be at least 1, not {threads}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # spinning keeps a core busy after each call; on a Pi that core belongs to the sources
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Weight-only int8 files hold int8 weights behind DequantizeLinear; without this ORT keeps
    # the DequantizeLinear nodes and re-dequantises every weight on every call (80 us instead
    # of 67 us for the forecaster at batch 1). With it, constant folding dequantises them once
    # at load: the same numbers (fp32 maths on the int8-rounded weights), a quarter of the disk.
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    # ORT's CPU arena keeps the peak of every call for good: one forecast batch of 2,048 windows
    # held 81 MiB for the rest of the process (0 without it), and the daemon's batches vary
    # (catch-up after a gap, explanations), so the arena only ever grew. Without it tensors go
    # to malloc, whose mmap threshold (edgetwin.daemon.memory) hands large ones back on free;
    # per-call latency did not change measurably (0.25 ms median at mixed batch sizes).
    so.enable_cpu_mem_arena = False
    so.log_severity_level = 3
    return so


def create_session(model: ModelFile, threads: int = 1) -> Any:
    """A CPU InferenceSession for a verified model whose I/O names and ranks match its manifest."""
    import onnxruntime as ort

    blob = model.read_verified()
    try:
        sess = ort.InferenceSession(
            blob, session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise DataCorrupt(
            f"model file {model.path} passed its checksum but onnxruntime cannot load it ({exc})",
            hint="the manifest and the model were rebuilt inconsistently; run scripts/train",
        ) from exc
    got = [(i.name, tuple(i.shape)) for i in (*sess.get_inputs(), *sess.get_outputs())]
    want = [*model.inputs, *model.outputs]
    if len(got) != len(want) or not all(_same_io(g, w) for g, w in zip(got, want, strict=False)):
        raise DataCorrupt(
            f"model file {model.path} has inputs/outputs {got} but the manifest promises {want}",
            hint="run scripts/train to rebuild models and manifest together",
        )
    _LOGGER.debug("loaded %s (%s, %d bytes)", model.name, model.precision, model.size)
    return sess


def _same_io(got: tuple[str, tuple[Any, ...]], want: tuple[str, tuple[Any, ...]]) -> bool:
    """Same name and rank; fixed dimensions equal (symbolic ones such as batch match anything)."""
    (g_name, g_shape), (w_name, w_shape) = got, want
    if g_name != w_name or len(g_shape) != len(w_shape):
        return False
    return all(
        not (isinstance(a, int) and isinstance(b, int)) or a == b
        for a, b in zip(g_shape, w_shape, strict=True)
    )
