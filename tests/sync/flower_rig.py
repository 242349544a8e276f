"""A real Flower deployment on loopback: SuperLink (TLS, SuperNode auth) and N SuperNodes.

Each device is a real twin (cheap KDF) holding one prepared SecAggShare, and a real
``flower-supernode`` process authenticated with its own registered P-384 key. The
app bundle is edgetwin's, plus test hooks (``_TEST_APP``): the server side records
every message it receives (to check nothing arrives in the clear) and a device
whose node config says ``vanish-at="2"`` kills its own SuperNode when the masked-
vector stage reaches it (a device gone mid-round, no reply ever).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetwin.sync import flower_deploy as fd
from tests.sync.helpers import PASSPHRASE, free_port, make_tls, make_twin, wait_port

REPO = Path(__file__).resolve().parents[2]

_TEST_APP = '''"""edgetwin's secagg app with test hooks (tests/sync/flower_rig.py)."""
import os, pickle, signal, time
from pathlib import Path

from edgetwin.sync.collector.flower_server import make_server_app
from edgetwin.sync.flower_client import make_client_app

CAPTURE = Path(os.environ["EDGETWIN_RIG_CAPTURE"])


class CapturingGrid:
    def __init__(self, inner):
        self._inner = inner
        self._n = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(self._inner.send_and_receive(messages, timeout=timeout))
        for m in replies:
            self._n += 1
            blob = {"src": m.metadata.src_node_id, "error": m.has_error(),
                    "configs": {} if m.has_error() else {
                        k: dict(v) for k, v in m.content.config_records.items()},
                    "arrays": {} if m.has_error() else {
                        k: [a.numpy().tolist() for a in v.values()]
                        for k, v in m.content.array_records.items()}}
            (CAPTURE / f"{self._n:05d}.pkl").write_bytes(pickle.dumps(blob))
        return replies


def vanish_mod(msg, ctxt, call_next):
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
    stage = msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE)
    if stage == "collect_masked_vectors" and str(ctxt.node_config.get("vanish-at")) == "2":
        pid = os.getpid()
        while pid > 1:  # walk up to the SuperNode and kill it, then everything below
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{ppid}/cmdline").read_bytes()
            if b"flower-supernode" in cmd:
                os.kill(ppid, signal.SIGKILL)
                break
            pid = ppid
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(0)
    return call_next(msg, ctxt)


server_app = make_server_app(wrap_grid=CapturingGrid)
client_app = make_client_app(outer_mods=(vanish_mod,))
'''


# Flower gives a started ClientApp/ServerApp process 30 s (HEARTBEAT_DEFAULT_INTERVAL) to
# check in before its task token expires; on this shared 2-core machine (load 50+) importing
# Flower alone can take longer, and the SuperNode then restarts the app in a loop. The rig runs
# SuperLink and SuperNodes with a 10-minute grace instead (the token TTL only, nothing else).
_LAUNCH = """
import sys
import flwr.supercore.corestate.in_memory_corestate as corestate
corestate.HEARTBEAT_DEFAULT_INTERVAL = 600
name = sys.argv.pop(1)
if name == "flower-superlink":
    from flwr.superlink.cli import flower_superlink as main
else:
    from flwr.supernode.cli import flower_supernode as main
sys.argv[0] = name
main()
"""


def _patient(cmd: list[str]) -> list[str]:
    """``cmd`` (a Flower console script) run through _LAUNCH."""
    return [sys.executable, "-c", _LAUNCH, Path(cmd[0]).name, *cmd[1:]]


@dataclass
class Device:
    """One simulated person: a twin, a node key, a SuperNode process."""

    index: int
    home: Path
    passphrase_file: Path
    node_key: Path
    node_pub: Path
    summary: float
    share_value: int | None = None
    grid_value: int | None = None
    process: subprocess.Popen[bytes] | None = None
    vanish: bool = False


@dataclass
class FlowerRig:
    """SuperLink + SuperNodes for one test; ``close()`` ends every process it started."""

    workdir: Path
    port: int = field(default_factory=free_port)
    devices: list[Device] = field(default_factory=list)
    superlink: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        (self.workdir / "tls").mkdir(parents=True, exist_ok=True)
        self.tls = make_tls(self.workdir / "tls")
        self.capture = self.workdir / "capture"
        self.capture.mkdir(exist_ok=True)
        self.flwr_home = self.workdir / "flwr"
        self.env = fd.flower_env(FLWR_HOME=str(self.flwr_home), PYTHONPATH=str(REPO),
                                 EDGETWIN_RIG_CAPTURE=str(self.capture))
        self.app = fd.write_app(self.workdir / "app", _TEST_APP)
        fd.write_cli_config(self.flwr_home, "rig", self.address, self.tls.ca)
        self._logs: list[Any] = []
        self._ports: set[int] = set()  # runtime ports handed to this rig's SuperNodes

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = fd.superlink_command(host="127.0.0.1", port=self.port, cert=self.tls.cert,
                                   key=self.tls.key, ca=self.tls.ca)
        self.superlink = self._spawn(_patient(cmd), "superlink")
        wait_port(self.port, timeout=60)

    def add_device(self, summary: float, *, config: Any, period_start: float, consent: bool = True,
                   prepare: bool = True, vanish: bool = False) -> Device:
        from edgetwin.privacy.consent import grant
        from edgetwin.privacy.secagg import prepare_share

        i = len(self.devices)
        home = self.workdir / f"dev{i}"
        store = make_twin(home)
        try:
            share = None
            if consent:
                grant(store, "hr_mean", "day", period_start)
            if prepare:
                share = prepare_share(store, config, "hr_mean", "day", period_start, summary,
                                      time.time())
        finally:
            store.close()
        pw = self.workdir / f"dev{i}.pass"
        pw.write_text(PASSPHRASE)
        pw.chmod(0o600)
        key, pub = fd.generate_node_key(self.workdir / "keys", f"dev{i}")
        dev = Device(i, home, pw, key, pub, summary, vanish=vanish)
        if share is not None:
            dev.share_value = share.value
            dev.grid_value = share.plan().encode(summary)
        self.devices.append(dev)
        return dev

    def register_and_start(self, devices: list[Device]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        def register(dev: Device) -> subprocess.CompletedProcess[str]:
            return subprocess.run([fd.tool("flwr"), "supernode", "register", str(dev.node_pub),
                                   "rig"], env=self.env, capture_output=True, text=True,
                                  timeout=300, check=False)

        with ThreadPoolExecutor(4) as pool:  # each is a flwr CLI process: ~1 s of CPU
            for r in pool.map(register, devices):
                assert r.returncode == 0, r.stdout + r.stderr
        ports: dict[int, int] = {}
        for dev in devices:
            ports[dev.index] = self._start_supernode(dev)
        # A SuperNode whose runtime port was taken between choosing and binding it exits
        # ("address already in use") and the round would wait for it forever (Flower samples
        # only once all expected nodes are online): every one must listen before a round
        # starts, and one that died is started again on another port. A port that answers is
        # not enough: in a CI rehearsal two SuperNodes had drawn the same port, the second
        # died and the first one's listening socket hid it.
        for _pass in range(3):
            dead = []
            for dev in devices:
                with contextlib.suppress(TimeoutError):  # alive but slow: the round waits
                    wait_port(ports[dev.index], timeout=120)
                assert dev.process is not None
                if dev.process.poll() is not None:
                    dead.append(dev)
            if not dead:
                return
            for dev in dead:
                ports[dev.index] = self._start_supernode(dev)
        raise AssertionError(f"SuperNodes {[d.index for d in dead]} did not start")

    def _start_supernode(self, dev: Device) -> int:
        cfg = {"edgetwin-home": str(dev.home), "passphrase-file": str(dev.passphrase_file),
               "vanish-at": "2" if dev.vanish else "0"}
        port = _port_outside_the_ephemeral_range(exclude=self._ports)
        self._ports.add(port)  # no two SuperNodes of this rig draw the same port
        cmd = fd.supernode_command(superlink=self.address, ca=self.tls.ca,
                                   node_key=dev.node_key, runtime_port=port, node_config=cfg)
        dev.process = self._spawn(_patient(cmd), f"dev{dev.index}")
        return port

    def run(self, run_config: dict[str, Any], timeout: float = 300) -> str:
        """``flwr run`` the app and wait for the run to finish; returns the CLI output."""
        cmd = [fd.tool("flwr"), "run", str(self.app), "rig", "--stream",
               "--run-config", fd.run_config_arg(run_config)]
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout,
                           check=False, cwd=self.app)
        return r.stdout + r.stderr

    def close(self) -> None:
        procs = [d.process for d in self.devices if d.process] + (
            [self.superlink] if self.superlink else [])
        pids = [p.pid for p in procs]
        for pid in pids:  # descendants too (Flower detaches its SuperExec processes)
            for child in _descendants(pid):
                _kill(child)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self._logs:
            f.close()

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        out = (self.workdir / f"{name}.log").open("wb")
        self._logs.append(out)
        return subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _port_outside_the_ephemeral_range(exclude: set[int] | frozenset[int] = frozenset()) -> int:
    """A free loopback port below Linux's ephemeral range (32768-60999), so the many outgoing
    connections of 30 SuperNodes and their apps cannot take it before its SuperNode binds it
    (free_port() hands out ephemeral ports: one was taken that way in a CI rehearsal)."""
    import random
    import socket

    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        if port in exclude:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def bench_round(devices: int = 30) -> dict[str, Any]:
    """One full round on loopback for scripts/bench_secagg.py: wall, server CPU, bytes."""
    import tempfile

    from edgetwin.config import Config, PrivacyConfig, SecAggConfig
    from edgetwin.sync.collector.flower_server import rounds

    t0_period = 1_750_032_000.0
    config = Config(privacy=PrivacyConfig(epsilon_per_release=1.0),
                    secagg=SecAggConfig(min_cohort=max(2, int(devices * 0.8)), levels=1024))
    with tempfile.TemporaryDirectory() as tmp:
        rig = FlowerRig(Path(tmp))
        try:
            rig.start()
            for i in range(devices):
                rig.add_device(60.0 + i % 30, config=config, period_start=t0_period)
            rig.register_and_start(rig.devices)
            db = Path(tmp) / "collector.db"
            t0 = time.perf_counter()
            out = rig.run(round_config(config, devices, t0_period, str(db), "bench",
                                       timeout=180.0), timeout=1200)
            wall = time.perf_counter() - t0
            rows = rounds(str(db))
            sizes = [p.stat().st_size for p in rig.capture.glob("*.pkl")]
        finally:
            rig.close()
    row = rows[0] if rows else {}
    return {"devices": devices, "state": row.get("state"), "round_wall_s": wall,
            "server_cpu_s": row.get("server_s"),
            "received_bytes_per_device": sum(sizes) / devices if sizes else None,
            "note": "wall includes SuperNodes starting their ClientApp processes; "
                    "bytes = pickled content of every reply the ServerApp received",
            "tail": out[-300:] if not rows else ""}


def round_config(config: Any, expected: int, period_start: float, db: str,
                 round_id: str, timeout: float = 90.0) -> dict[str, Any]:
    from edgetwin.privacy.metrics import METRICS

    lo, hi = METRICS["hr_mean"].default_bounds
    return {"metric": "hr_mean", "period": "day", "period-start": period_start,
            "round-id": round_id, "db": db, "expected": expected, "lower": lo, "upper": hi,
            "levels": config.secagg.levels, "epsilon": config.privacy.epsilon_per_release,
            "delta": config.secagg.delta, "min-cohort": config.secagg.min_cohort,
            "num-shares": 1.0, "threshold": 0.5, "timeout": timeout}
