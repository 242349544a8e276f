"""The aarch64 smoke test's driver; ``scripts/aarch64-smoke`` runs it inside the emulated Python.

Modes:
  run      run the steps below in this one process and write a JSON report (``--out``);
           exit 1 when a step failed. ``--baseline`` runs only the timing steps, natively, so
           emulated timings can be given as ratios (emulation says nothing about a real Pi).
  cpuinfo  print a Raspberry Pi's ``/proc/cpuinfo`` for a qemu CPU model (host side)
  merge    combine the per-CPU reports and the baseline into one report (host side)

Nothing here starts a child process: without binfmt_misc the emulated Python cannot exec
aarch64 binaries, so the CLI is driven in-process through click's ``CliRunner`` and the decoder
tests through ``pytest.main``.

Each step names the repo files it needs. While one of them is absent from the checkout (the
piece has not landed yet) the step is SKIPPED with "not yet available: <file>"; once they all
exist the step runs and any error FAILS it. ``REQUIRE_ALL_STEPS = True`` turns a missing file
into a failure too, for when every piece has landed. A step listed in ``KNOWN_FAILING`` is a
strict expected failure: it reports "xfail" while it fails for the documented reason and fails
the run as soon as it passes (or fails for another reason), until its entry is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Flip to True once every piece has landed: then a missing prerequisite fails instead of skipping.
REQUIRE_ALL_STEPS = True
# Longer than any step takes under emulation on a busy CI machine (the slowest, export_import,
# takes ~15 s on a quiet one): past it, a step's thread stacks go to stderr every interval.
STEP_STACK_DUMP_S = 180

REPO = Path(__file__).resolve().parent.parent
PASSPHRASE = "correct horse battery staple on a pi"

# What a Raspberry Pi's kernel shows; qemu's CPU model decides the instructions, this file what
# onnxruntime's CPU detection reads. Pi 4: BCM2711, Cortex-A72 r0p3; Pi 5: BCM2712, Cortex-A76 r4p1.
PI_CPUS: dict[str, dict[str, str]] = {
    "cortex-a72": {
        "features": "fp asimd evtstrm crc32 cpuid",
        "variant": "0x0",
        "part": "0xd08",
        "revision": "3",
        "board_revision": "c03114",
        "model": "Raspberry Pi 4 Model B Rev 1.4",
    },
    "cortex-a76": {
        "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
        "asimdrdm lrcpc dcpop asimddp",
        "variant": "0x4",
        "part": "0xd0b",
        "revision": "1",
        "board_revision": "d04170",
        "model": "Raspberry Pi 5 Model B Rev 1.0",
    },
}


# --- the steps -------------------------------------------------------------------------------


class StepFailed(Exception):
    """A step's check did not hold."""


@dataclass
class Ctx:
    """What the steps share within one run."""

    cpu: str | None
    site: Path | None
    baseline: bool
    work: Path
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.work / "home"

    @property
    def passphrase_file(self) -> Path:
        return self.work / "passphrase"

    def invoke(self, *args: str, home: Path | None = None) -> Any:
        """Run one edgetwin command in-process; click's Result."""
        from click.testing import CliRunner

        from edgetwin.cli.main import cli

        argv = ["--home", str(home or self.home), "--passphrase-file", str(self.passphrase_file)]
        return CliRunner().invoke(cli, [*argv, *args], catch_exceptions=True)

    def cli(self, *args: str, home: Path | None = None) -> str:
        """Run one edgetwin command in-process; its stdout, or StepFailed with its output."""
        result = self.invoke(*args, home=home)
        if result.exit_code != 0:
            detail = ""
            if result.exc_info is not None and not isinstance(result.exception, SystemExit):
                detail = "".join(traceback.format_exception(*result.exc_info))
            raise StepFailed(
                f"edgetwin {' '.join(args)} exited {result.exit_code}:\n"
                f"{result.output[-3000:]}{detail[-3000:]}"
            )
        return result.stdout


@dataclass(frozen=True)
class Step:
    name: str
    requires: tuple[str, ...]
    run: Callable[[Ctx], dict[str, Any]]
    baseline: bool = False  # also run natively, for the relative timings


def step_platform(ctx: Ctx) -> dict[str, Any]:
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "libc": "-".join(platform.libc_ver()),
    }
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in cpuinfo.splitlines())
    )
    info["cpu_part"] = fields.get("CPU part")
    info["model"] = fields.get("Model")
    if ctx.baseline:
        return info
    if info["machine"] != "aarch64":
        raise StepFailed(f"expected an aarch64 interpreter, got {info['machine']}")
    if ctx.cpu is not None and info["cpu_part"] != PI_CPUS[ctx.cpu]["part"]:
        raise StepFailed(f"/proc/cpuinfo shows CPU part {info['cpu_part']}, not the Pi's")
    return info


def step_wheels(ctx: Ctx) -> dict[str, Any]:
    """The distributions installed in the aarch64 site dir, with their wheel tags."""
    from importlib import metadata

    if ctx.site is None:
        raise StepFailed("no --site given")
    wheels = []
    for dist in metadata.distributions(path=[str(ctx.site)]):
        tags = [
            line.split(":", 1)[1].strip()
            for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")
        ]
        wheels.append({"name": dist.metadata["Name"], "version": dist.version, "tags": tags})
    wheels.sort(key=lambda w: w["name"].lower())
    if not wheels:
        raise StepFailed(f"no distributions found in {ctx.site}")
    return {"wheels": wheels}


IMPORTS = (
    "edgetwin.cli.main",
    "numpy",
    "onnxruntime",
    "cryptography.hazmat.primitives.ciphers.aead",
    "sqlite3",
    "pyrage",
    "serial",
    "bleak",
    "pyedflib",
    "opendp.prelude",
    "paho.mqtt.client",
)


def step_imports(ctx: Ctx) -> dict[str, Any]:
    """Import time of the CLI entry and of each heavy runtime library, in this order."""
    import importlib

    times: dict[str, float] = {}
    total = 0.0
    for module in IMPORTS:
        t0 = time.perf_counter()
        importlib.import_module(module)
        times[module] = round(time.perf_counter() - t0, 4)
        total += times[module]
    return {"import_s": times, "total_import_s": round(total, 4)}


def step_brainflow_native(ctx: Ctx) -> dict[str, Any]:
    """Whether BrainFlow's native library loads (its PyPI wheel ships x86-64 libraries only)."""
    error = _brainflow_native_error()
    return {"native_ok": error is None, "native_error": error}


def step_brainflow_degrades(ctx: Ctx) -> dict[str, Any]:
    """edgetwin's BrainFlow check agrees with the loader and, if it fails, names the CPU."""
    from edgetwin.sources.brainflow import brainflow_available

    error = _brainflow_native_error()
    reason = brainflow_available()
    if (reason is None) != (error is None):
        raise StepFailed(f"brainflow_available() says {reason!r} but loading gives {error!r}")
    if reason is not None and platform.machine() not in reason:
        raise StepFailed(f"the reason does not name this CPU ({platform.machine()}): {reason}")
    return {"native_ok": reason is None, "edgetwin_reason": reason}


def step_onnxruntime(ctx: Ctx) -> dict[str, Any]:
    """A small float + int8 graph built here: session start and per-run time."""
    import numpy as np
    import onnxruntime as ort

    t0 = time.perf_counter()
    session = ort.InferenceSession(_tiny_model(), providers=["CPUExecutionProvider"])
    create_s = time.perf_counter() - t0
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    y = session.run(None, {"x": x})[0]
    if y.shape != (1, 64) or not np.isfinite(y).all():
        raise StepFailed(f"unexpected output {y.shape}")
    runs = _timed(lambda: session.run(None, {"x": x}), n=30)
    return {"ort_version": ort.__version__, "session_create_s": round(create_s, 4), **runs}


def step_models(ctx: Ctx) -> dict[str, Any]:
    """The shipped models through the registry (sha256, shapes): per-window time, int8 and fp32."""
    import numpy as np

    from edgetwin.inference.registry import load_manifest
    from edgetwin.inference.session import create_session

    manifest = load_manifest(REPO / "models")
    rng = np.random.default_rng(3)
    out: dict[str, Any] = {}
    for (model, precision), file in sorted(manifest.files.items()):
        session = create_session(file, threads=1)  # the daemon's budget on a Pi: one core
        feeds = {
            i.name: rng.uniform(-1, 1, [d if isinstance(d, int) else 1 for d in i.shape]).astype(
                np.float32
            )
            for i in session.get_inputs()
        }
        for value in session.run(None, feeds):
            if not np.isfinite(value).all():
                raise StepFailed(f"{model} {precision} produced non-finite output")
        out[f"{model}.{precision}"] = _timed(lambda s=session, f=feeds: s.run(None, f), n=30)
    if not any(key.endswith(".int8") for key in out):
        raise StepFailed("the manifest lists no int8 model")
    per_window = {
        p: round(sum(t["median_ms"] for k, t in out.items() if k.endswith("." + p)), 4)
        for p in ("int8", "fp32")
    }
    return {"models": out, "per_window_ms": per_window}


def step_init(ctx: Ctx) -> dict[str, Any]:
    ctx.passphrase_file.write_text(PASSPHRASE + "\n")
    ctx.passphrase_file.chmod(0o600)
    t0 = time.perf_counter()
    ctx.cli("init")
    if not (ctx.home / "twin.db").exists():
        raise StepFailed(f"init left no twin.db in {ctx.home}")
    return {"init_s": round(time.perf_counter() - t0, 3)}


RECORDING_S = 10 * 60  # two forecaster contexts of 60 five-second steps


def step_ingest(ctx: Ctx) -> dict[str, Any]:
    """Ingest a short synthetic wearable recording (CSV per DESIGN.md)."""
    recording = ctx.work / "recording.csv"
    n = _write_recording(recording)
    t0 = time.perf_counter()
    report = json.loads(ctx.cli("--json", "ingest", str(recording), "--stream", "wrist"))
    elapsed = time.perf_counter() - t0
    if not report.get("frames"):
        raise StepFailed(f"ingest made no feature frames: {report}")
    ctx.data["ingest"] = report
    return {
        "rows": n,
        "samples": report.get("samples"),
        "frames": report.get("frames"),
        "predictions": report.get("predictions"),
        "ingest_s": round(elapsed, 3),
    }


def step_dsp_ingest(ctx: Ctx) -> dict[str, Any]:
    """An EEG + ECG recording on a CPU where BrainFlow's DataFilter has no native library (the
    PyPI wheel has none for aarch64): ingest works and the EEG band powers still appear."""
    import numpy as np

    rng = np.random.default_rng(11)
    path = ctx.work / "headset.csv"
    fs, seconds, t0 = 256, 30, 1_700_000_700.0
    t = t0 + np.arange(fs * seconds) / fs
    alpha = 10 * np.sin(2 * np.pi * 10 * t)
    with path.open("w") as f:
        f.write("timestamp,eeg_af7,eeg_af8,ecg_ii\n")
        f.writelines(
            f"{t[i]:.4f},{rng.normal(0, 20):.2f},{alpha[i] + rng.normal(0, 5):.2f},"
            f"{rng.normal(0, 50):.1f}\n"
            for i in range(len(t))
        )
    report = json.loads(ctx.cli("--json", "ingest", str(path), "--stream", "headset"))
    frames = json.loads(ctx.cli("--json", "timeline", "--from", str(t0), "--to", str(t0 + seconds)))
    alphas = [f["features"]["eeg_alpha"] for f in frames if f["features"]["eeg_alpha"] is not None]
    if not alphas:
        raise StepFailed(f"no EEG alpha power in {len(frames)} frames after ingesting EEG")
    return {"frames": report.get("frames"), "eeg_alpha": [round(a, 3) for a in alphas]}


def step_timeline(ctx: Ctx) -> dict[str, Any]:
    frames = json.loads(ctx.cli("--json", "timeline"))
    if not isinstance(frames, list) or not frames:
        raise StepFailed("timeline --json returned no frames after ingest")
    hr = [f["features"].get("hr") for f in frames]
    if all(v is None for v in hr):
        raise StepFailed("no frame has a heart rate although the recording has one")
    ctx.data["frames"] = len(frames)
    seen = sorted({k for f in frames for k, v in f["features"].items() if v is not None})
    return {"frames": len(frames), "keys": sorted(frames[0]), "features_seen": seen}


def step_predictions(ctx: Ctx) -> dict[str, Any]:
    t0 = time.perf_counter()
    preds = json.loads(ctx.cli("--json", "predictions", "--last", "5"))
    elapsed = time.perf_counter() - t0
    if not isinstance(preds, list) or not preds:
        raise StepFailed(
            f"predictions --json returned nothing after ingest: {ctx.data.get('ingest')}"
        )
    for p in preds:
        missing = {"t", "target", "step_s", "horizon", "band", "attention", "imputed"} - set(p)
        if missing:
            raise StepFailed(f"prediction lacks {sorted(missing)}")
        if len(p["band"]) != len(p["horizon"]):
            raise StepFailed("band and horizon differ in length")
        values = [v for v in p["horizon"] if v is not None]
        if not values or not all(lo <= hi for lo, hi in p["band"] if lo is not None):
            raise StepFailed(f"implausible forecast: {p}")
    return {
        "predictions": len(preds),
        "targets": sorted({p["target"] for p in preds}),
        "predictions_s": round(elapsed, 3),
    }


def step_bundle(ctx: Ctx) -> dict[str, Any]:
    """Export encrypted bundles (age X25519 recipient, and passphrase) and import each into a
    fresh home; the restored twin has the same timeline."""
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    identity_file = ctx.work / "identity.txt"
    identity_file.write_text(f"{identity}\n")
    identity_file.chmod(0o600)
    bundle_pass = ctx.work / "bundle-passphrase"
    bundle_pass.write_text("a bundle passphrase for the pi\n")
    bundle_pass.chmod(0o600)
    modes = {
        "recipient": (
            ["--recipient", str(identity.to_public())],
            ["--identity", str(identity_file)],
        ),
        "passphrase": (
            ["--passphrase", "--bundle-passphrase-file", str(bundle_pass)],
            ["--passphrase", "--bundle-passphrase-file", str(bundle_pass)],
        ),
    }
    before = json.loads(ctx.cli("--json", "timeline"))
    out: dict[str, Any] = {}
    for mode, (export_args, import_args) in modes.items():
        bundle = ctx.work / f"twin-{mode}.age"
        t0 = time.perf_counter()
        ctx.cli("--json", "export", "-o", str(bundle), *export_args)
        export_s = time.perf_counter() - t0
        restored = ctx.work / f"restored-{mode}"
        t0 = time.perf_counter()
        ctx.cli("--json", "import", str(bundle), *import_args, home=restored)
        import_s = time.perf_counter() - t0
        after = json.loads(ctx.cli("--json", "timeline", home=restored))
        if [f["t"] for f in after] != [f["t"] for f in before]:
            raise StepFailed(
                f"{mode}: restored timeline has {len(after)} frames, not {len(before)}"
            )
        out[mode] = {
            "bundle_bytes": bundle.stat().st_size,
            "export_s": round(export_s, 3),
            "import_s": round(import_s, 3),
        }
    return out


def step_daemon(ctx: Ctx) -> dict[str, Any]:
    """The daemon on a Pi whose BrainFlow has no native library: with the simulator and a
    BrainFlow board paired it runs its full duration, exits 0, and the simulator's data lands
    while the BrainFlow source stays empty (issue 7: every other source keeps running)."""
    home = ctx.work / "daemon-home"
    ctx.cli("init", home=home)
    ctx.cli("pair", "add", "simulator", "--name", "sim", "--speed", "10", home=home)
    ctx.cli("pair", "add", "brainflow", "--board", "SYNTHETIC_BOARD", "--name", "eeg", home=home)
    t0 = time.perf_counter()
    ctx.cli("daemon", "run", "--duration", "8", home=home)
    run_s = time.perf_counter() - t0
    status = json.loads(ctx.cli("--json", "status", home=home))
    samples = {s["name"]: s["samples"] for s in status["sources"]}
    if not samples.get("sim"):
        raise StepFailed(f"the simulator delivered nothing: {status['sources']}")
    if samples.get("eeg"):
        raise StepFailed(f"BrainFlow delivered samples without its native library: {samples}")
    return {"run_s": round(run_s, 3), "samples": samples}


def step_secagg_round(ctx: Ctx) -> dict[str, Any]:
    """Issue 16 on a Pi: Flower (flwr, from the ``[secagg]`` extra) imports, and one round of
    its real SecAgg+ protocol (``SecAggPlusWorkflow`` against ``secaggplus_mod``) runs for 6
    devices (secret shares with 5 each: the protocol wants an odd count) through an in-process
    Grid, each device a ClientApp masking its own OpenDP share:
    the server decodes exactly the sum of the shares and publishes."""
    t0 = time.perf_counter()
    import flwr  # noqa: F401 - the import itself is under test

    import_s = time.perf_counter() - t0
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import bench_secagg
    finally:
        sys.path.remove(str(REPO / "scripts"))
    t0 = time.perf_counter()
    result = bench_secagg.in_process_round(6, num_shares=5, db=ctx.work / "secagg.db")
    round_s = time.perf_counter() - t0
    if result["state"] != "published" or not result["sum_exact"]:
        raise StepFailed(f"the round did not publish the exact sum: {result}")
    from importlib.metadata import version

    return {"flwr": version("flwr"), "import_flwr_s": round(import_s, 3),
            "round_s": round(round_s, 3), "state": result["state"],
            "published_mean": result["published_mean"],
            "device_cpu_ms_median": round(result["device_cpu_ms_median"], 1),
            "device_reply_bytes_median": result["device_reply_bytes_median"]}


def _pytest_step(pattern: str) -> Callable[[Ctx], dict[str, Any]]:
    """Run the repo's own decoder tests (and so their test vectors) in this process.

    Hypothesis property tests are deselected: they exercise the same pure-Python logic as the
    native run with hundreds of examples each, which under emulation costs half a minute per
    file and proves nothing the byte-exact vectors do not.
    """

    def run(ctx: Ctx) -> dict[str, Any]:
        import pytest

        files = sorted(str(p) for p in REPO.glob(pattern))
        if not files:
            raise StepFailed(f"no test files match {pattern}")

        class Counter:
            def __init__(self) -> None:
                self.counts: dict[str, int] = {}

            def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
                keep = [i for i in items if not getattr(i.obj, "is_hypothesis_test", False)]
                dropped = [i for i in items if i not in keep]
                if dropped:
                    config.hook.pytest_deselected(items=dropped)
                    self.counts["deselected_property_tests"] = len(dropped)
                items[:] = keep

            def pytest_runtest_logreport(self, report: Any) -> None:
                if report.when == "call" or report.outcome != "passed":
                    self.counts[report.outcome] = self.counts.get(report.outcome, 0) + 1

        counter = Counter()
        t0 = time.perf_counter()
        with _chdir(ctx.work):
            code = pytest.main(
                ["-q", "-p", "no:cacheprovider", "--rootdir", str(REPO), *files],
                plugins=[counter],
            )
        result = {"files": [Path(f).name for f in files], "outcomes": counter.counts}
        result["pytest_s"] = round(time.perf_counter() - t0, 3)
        if code != 0 or counter.counts.get("failed") or not counter.counts.get("passed"):
            raise StepFailed(f"pytest exited {int(code)}: {counter.counts}")
        return result

    return run


STEPS: tuple[Step, ...] = (
    Step("platform", (), step_platform, baseline=True),
    Step("wheels", (), step_wheels),
    Step("imports", ("edgetwin/cli/main.py",), step_imports, baseline=True),
    Step("onnxruntime", (), step_onnxruntime, baseline=True),
    Step("brainflow_native", (), step_brainflow_native),
    Step("brainflow_degrades", ("edgetwin/sources/brainflow.py",), step_brainflow_degrades),
    Step(
        "models",
        ("models/manifest.json", "edgetwin/inference/registry.py", "edgetwin/inference/session.py"),
        step_models,
        baseline=True,
    ),
    Step("init", ("edgetwin/cli/keys.py",), step_init),
    Step("ingest", ("edgetwin/cli/data.py",), step_ingest),
    Step("timeline", ("edgetwin/cli/data.py",), step_timeline),
    Step("dsp_ingest", ("edgetwin/cli/data.py", "edgetwin/features/dsp.py"), step_dsp_ingest),
    Step(
        "predictions",
        ("edgetwin/cli/data.py", "models/manifest.json"),
        step_predictions,
    ),
    Step("export_import", ("edgetwin/cli/bundle.py",), step_bundle),
    Step(
        "daemon",
        ("edgetwin/cli/daemon.py", "edgetwin/cli/pair.py", "edgetwin/cli/pair_brainflow.py"),
        step_daemon,
    ),
    Step(
        "secagg_round",
        ("edgetwin/sync/flower_client.py", "edgetwin/sync/collector/flower_server.py",
         "scripts/bench_secagg.py"),
        step_secagg_round,
    ),
    Step(
        "gatt_vectors",
        ("edgetwin/sources/gatt.py", "tests/sources/test_gatt.py"),
        _pytest_step("tests/sources/test_gatt*.py"),
    ),
    Step(
        "bridge_vectors",
        (
            "edgetwin/sources/bridge_protocol.py",
            "firmware_bridges/test_vectors.json",
            "tests/sources/test_bridge_protocol.py",
        ),
        _pytest_step("tests/sources/test_bridge_protocol*.py"),
    ),
)

# A step that depends on an earlier one is skipped when that one did not pass.
DEPENDS = {
    "ingest": "init",
    "timeline": "ingest",
    "dsp_ingest": "init",
    "predictions": "ingest",
    "export_import": "timeline",
    "daemon": "init",
}

# Steps that fail today for a known reason, like pytest's xfail(strict=True): a failure whose
# error contains the marker is reported as "xfail" and does not fail the run; any other failure
# fails it, and so does a pass, until the entry is removed here, so a fix cannot go unnoticed.
KNOWN_FAILING: dict[str, tuple[str, str]] = {
    # step name: (why it fails, a text its error must contain)
}


def run_steps(ctx: Ctx) -> list[dict[str, Any]]:
    """Run every step that applies; one result dict per step, in order."""
    results: list[dict[str, Any]] = []
    status: dict[str, str] = {}
    for step in STEPS:
        if ctx.baseline and not step.baseline:
            continue
        missing = [r for r in step.requires if not (REPO / r).exists()]
        entry: dict[str, Any] = {"step": step.name}
        dep = DEPENDS.get(step.name)
        if missing and not REQUIRE_ALL_STEPS:
            entry.update(status="skipped", reason=f"not yet available: {', '.join(missing)}")
        elif missing:
            entry.update(status="failed", error=f"missing: {', '.join(missing)}")
        elif dep is not None and status.get(dep) != "ok":
            # An upstream step that was skipped for a missing piece skips this one the same way;
            # one that failed makes this one fail.
            if status.get(dep) == "skipped" and not REQUIRE_ALL_STEPS:
                entry.update(status="skipped", reason=f"not yet available: step {dep}")
            else:
                entry.update(status="failed", error=f"step {dep} did not pass")
        else:
            t0 = time.perf_counter()
            # A step that hangs leaves every thread's stack in the log (and the run goes on), so
            # an emulated run killed by the outer timeout still says where it was stuck.
            faulthandler.dump_traceback_later(STEP_STACK_DUMP_S, repeat=True, file=sys.stderr)
            try:
                entry.update(step.run(ctx))
                entry["status"] = "ok"
            except Exception as exc:  # noqa: BLE001 - a failing step is reported, not raised
                entry.update(
                    status="failed",
                    error=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc()[-4000:],
                )
            finally:
                faulthandler.cancel_dump_traceback_later()
            entry["elapsed_s"] = round(time.perf_counter() - t0, 3)
            if step.name in KNOWN_FAILING:
                reason, marker = KNOWN_FAILING[step.name]
                entry["known_failure"] = reason
                if entry["status"] == "failed" and marker in entry["error"]:
                    entry["status"] = "xfail"
                    entry.pop("traceback", None)
                elif entry["status"] == "ok":
                    entry.update(
                        status="failed",
                        error="passes now: remove it from KNOWN_FAILING (scripts/aarch64_smoke.py)",
                    )
        status[step.name] = entry["status"]
        line = f"[{entry['status']:>7}] {step.name}"
        if "reason" in entry:
            line += f": {entry['reason']}"
        if "error" in entry:
            line += f": {entry['error'].splitlines()[0]}"
        if "elapsed_s" in entry:
            line += f" ({entry['elapsed_s']} s)"
        print(line, file=sys.stderr, flush=True)
        if entry["status"] == "failed" and "traceback" in entry:
            print(entry["traceback"], file=sys.stderr, flush=True)
        results.append(entry)
    return results


# --- helpers ---------------------------------------------------------------------------------


def _brainflow_native_error() -> str | None:
    import warnings

    try:
        with warnings.catch_warnings():
            # brainflow 5.23 imports pkg_resources, which warns about its own deprecation.
            warnings.simplefilter("ignore")
            from brainflow.board_shim import BoardControllerDLL

            BoardControllerDLL.get_instance()
    except (ImportError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


def _timed(fn: Callable[[], object], n: int) -> dict[str, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "median_ms": round(statistics.median(times) * 1000, 4),
        "p90_ms": round(times[int(0.9 * (n - 1))] * 1000, 4),
        "runs": n,
    }


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _write_recording(path: Path) -> int:
    """A deterministic wrist recording: 1 Hz vitals and acceleration, and one RR row per beat."""
    import numpy as np

    rng = np.random.default_rng(7)
    t0 = 1_700_000_000.0
    rows: list[tuple[float, str]] = []
    for i in range(RECORDING_S):
        hr = 64 + 6 * np.sin(i / 180) + rng.normal(0, 1.5)
        spo2 = min(100.0, 97.5 + rng.normal(0, 0.4))
        temp = 33.2 + 0.3 * np.sin(i / 420) + rng.normal(0, 0.03)
        eda = 2.0 + 0.2 * np.sin(i / 300) + rng.normal(0, 0.02)
        ax, ay, az = rng.normal(0, 0.05, 3) + np.array([0.0, 0.0, 1.0])
        rows.append(
            (t0 + i, f"{hr:.1f},{spo2:.1f},{temp:.2f},{eda:.3f},{ax:.4f},{ay:.4f},{az:.4f},")
        )
    t = t0 + 0.3
    while t < t0 + RECORDING_S:
        rr = 930 + 40 * np.sin(t / 7) + rng.normal(0, 25)
        rows.append((t, f",,,,,,,{rr:.1f}"))
        t += rr / 1000
    rows.sort(key=lambda r: r[0])
    with path.open("w") as f:
        f.write("timestamp,hr,spo2,temp,eda,accel_x,accel_y,accel_z,rr\n")
        f.writelines(f"{ts:.3f},{rest}\n" for ts, rest in rows)
    return len(rows)


def _tiny_model() -> bytes:
    """ONNX bytes for x[1,256] -> MatMul -> Relu -> DynamicQuantizeLinear -> MatMulInteger -> Cast.

    Encoded by hand (the ``onnx`` package is a training-only dependency) so that onnxruntime's
    float and int8 kernels run before any shipped model exists.
    """
    import numpy as np

    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((256, 256)) / 16).astype(np.float32)
    w2 = rng.integers(-127, 128, (256, 64)).astype(np.int8)
    float_t, uint8_t, int8_t, int32_t = 1, 2, 3, 6  # TensorProto.DataType

    def tensor(name: str, arr: Any, dtype: int) -> bytes:
        dims = b"".join(_pb_varint_field(1, d) for d in arr.shape)
        return (
            dims
            + _pb_varint_field(2, dtype)
            + _pb_bytes(8, name.encode())
            + _pb_bytes(9, arr.tobytes())
        )

    def value_info(name: str, dtype: int, shape: tuple[int, ...]) -> bytes:
        dims = b"".join(_pb_bytes(1, _pb_varint_field(1, d)) for d in shape)
        tensor_type = _pb_varint_field(1, dtype) + _pb_bytes(2, dims)
        return _pb_bytes(1, name.encode()) + _pb_bytes(2, _pb_bytes(1, tensor_type))

    def node(op: str, inputs: list[str], outputs: list[str], **ints: int) -> bytes:
        body = b"".join(_pb_bytes(1, i.encode()) for i in inputs)
        body += b"".join(_pb_bytes(2, o.encode()) for o in outputs)
        body += _pb_bytes(4, op.encode())
        for key, val in ints.items():  # AttributeProto: name=1, i=3, type=20 (INT=2)
            attr = _pb_bytes(1, key.encode()) + _pb_varint_field(3, val) + _pb_varint_field(20, 2)
            body += _pb_bytes(5, attr)
        return body

    nodes = [
        node("MatMul", ["x", "w1"], ["h"]),
        node("Relu", ["h"], ["r"]),
        node("DynamicQuantizeLinear", ["r"], ["rq", "rs", "rz"]),
        node("MatMulInteger", ["rq", "w2", "rz"], ["yi"]),
        node("Cast", ["yi"], ["y"], to=float_t),
    ]
    graph = b"".join(_pb_bytes(1, n) for n in nodes)
    graph += _pb_bytes(2, b"smoke")
    graph += _pb_bytes(5, tensor("w1", w1, float_t)) + _pb_bytes(5, tensor("w2", w2, int8_t))
    graph += _pb_bytes(11, value_info("x", float_t, (1, 256)))
    graph += _pb_bytes(12, value_info("y", float_t, (1, 64)))
    del uint8_t, int32_t  # named for the reader; the graph infers them
    opset = _pb_bytes(1, b"") + _pb_varint_field(2, 13)
    return _pb_varint_field(1, 7) + _pb_bytes(8, opset) + _pb_bytes(7, graph)


def _pb_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _pb_varint_field(number: int, value: int) -> bytes:
    return _pb_varint(number << 3) + _pb_varint(value)


def _pb_bytes(number: int, payload: bytes) -> bytes:
    return _pb_varint(number << 3 | 2) + _pb_varint(len(payload)) + payload


# --- modes -----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="smoke-"))
    try:
        ctx = Ctx(cpu=args.cpu, site=args.site, baseline=args.baseline, work=work)
        steps = run_steps(ctx)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "run": "native" if args.baseline else args.cpu,
        "machine": platform.machine(),
        "require_all_steps": REQUIRE_ALL_STEPS,
        "elapsed_s": round(time.perf_counter() - t0, 3),
        "steps": steps,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if any(s["status"] == "failed" for s in steps) else 0


def cmd_cpuinfo(args: argparse.Namespace) -> int:
    cpu = PI_CPUS[args.cpu]
    # As many processors as the host has: qemu's threads are the host's, and /sys is the host's.
    n = len(os.sched_getaffinity(0))
    blocks = [
        f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {cpu['features']}\n"
        f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: {cpu['variant']}\n"
        f"CPU part\t: {cpu['part']}\nCPU revision\t: {cpu['revision']}\n"
        for i in range(n)
    ]
    tail = (
        f"Revision\t: {cpu['board_revision']}\nSerial\t\t: 100000000badc0de\n"
        f"Model\t\t: {cpu['model']}\n"
    )
    sys.stdout.write("\n".join(blocks) + "\n" + tail)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """One report: per-run steps, ratios against the native baseline, the aarch64 wheel set."""
    runs = [json.loads(Path(p).read_text()) for p in args.reports]
    meta: dict[str, Any] = {}
    for item in args.meta:
        key, _, value = item.partition("=")
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
    by_run = {r["run"]: r for r in runs}
    native = by_run.get("native")
    problems = [f"{c}: no report (crashed?)" for c in args.expect_cpus.split() if c not in by_run]
    known: list[str] = []
    wheels: list[dict[str, Any]] = []
    relative: dict[str, dict[str, float]] = {}
    for run in runs:
        steps = {s["step"]: s for s in run["steps"]}
        problems += [
            f"{run['run']}: {s['step']} failed: {(s.get('error') or '?').splitlines()[0]}"
            for s in run["steps"]
            if s["status"] == "failed"
        ]
        known += [
            f"{run['run']}: {s['step']}: {s['known_failure']}"
            for s in run["steps"]
            if s["status"] == "xfail"
        ]
        if "wheels" in steps and steps["wheels"]["status"] == "ok" and not wheels:
            wheels = steps["wheels"]["wheels"]
        if native is not None and run is not native:
            relative[run["run"]] = _ratios(steps, {s["step"]: s for s in native["steps"]})
    report = {
        "ok": not problems,
        "problems": problems,
        "known_failures": known,
        "meta": meta,
        "relative_to_native": relative,
        "wheels": wheels,
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for run in runs:
        counts: dict[str, int] = {}
        for s in run["steps"]:
            counts[s["status"]] = counts.get(s["status"], 0) + 1
        print(f"aarch64-smoke: {run['run']}: {counts} in {run['elapsed_s']} s", file=sys.stderr)
    for name, ratios in relative.items():
        print(f"aarch64-smoke: {name} vs native: {ratios}", file=sys.stderr)
    for k in known:
        print(f"aarch64-smoke: KNOWN FAILURE (xfail) {k}", file=sys.stderr)
    for p in problems:
        print(f"aarch64-smoke: FAILED {p}", file=sys.stderr)
    print(f"aarch64-smoke: report in {args.out}", file=sys.stderr)
    return 0 if not problems else 1


def _ratios(emulated: dict[str, Any], native: dict[str, Any]) -> dict[str, float]:
    """Emulated / native for the timings both runs have."""
    out: dict[str, float] = {}

    def both(step: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        a, b = emulated.get(step, {}), native.get(step, {})
        return (a, b) if a.get("status") == b.get("status") == "ok" else None

    def ratio(key: str, a: float | None, b: float | None) -> None:
        if a and b:
            out[key] = round(a / b, 1)

    if pair := both("imports"):
        em, nat = pair
        ratio("total_import", em["total_import_s"], nat["total_import_s"])
        for mod in ("edgetwin.cli.main", "numpy", "onnxruntime"):
            ratio(f"import {mod}", em["import_s"].get(mod), nat["import_s"].get(mod))
    if pair := both("onnxruntime"):
        ratio("tiny_model_run", pair[0]["median_ms"], pair[1]["median_ms"])
    if pair := both("models"):
        for name, timing in pair[0]["models"].items():
            if name in pair[1]["models"]:
                ratio(f"window {name}", timing["median_ms"], pair[1]["models"][name]["median_ms"])
        for precision, ms in pair[0]["per_window_ms"].items():
            ratio(f"per_window {precision}", ms, pair[1]["per_window_ms"].get(precision))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("--cpu", choices=sorted(PI_CPUS))
    p_run.add_argument("--site", type=Path)
    p_run.add_argument("--baseline", action="store_true")
    p_run.add_argument("--out", type=Path, required=True)
    p_cpu = sub.add_parser("cpuinfo")
    p_cpu.add_argument("--cpu", choices=sorted(PI_CPUS), required=True)
    p_merge = sub.add_parser("merge")
    p_merge.add_argument("--out", required=True)
    p_merge.add_argument("--meta", action="append", default=[])
    p_merge.add_argument("--expect-cpus", default="")
    p_merge.add_argument("reports", nargs="*")
    args = parser.parse_args(argv)
    return {"run": cmd_run, "cpuinfo": cmd_cpuinfo, "merge": cmd_merge}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
