"""Flower deployment plumbing: the app bundle, SuperLink/SuperNode command lines, node keys.

Flower's deployment engine runs the ServerApp and ClientApps in processes of its
own, loaded from a Flower App Bundle (FAB). :func:`write_app` writes a minimal app
directory whose components are edgetwin's (``flower_server.make_server_app`` and
``flower_client.make_client_app``); ``flwr run`` bundles it and the SuperLink
hands it to the SuperNodes. Runtime dependency installation is switched off on
both sides: the app needs nothing beyond an installed ``edgetwin[secagg]``.

SuperNode authentication is Flower's own: a NIST P-384 key pair per device, the
public half registered with ``flwr supernode register`` before the node may
connect (the SuperLink runs with ``--enable-supernode-auth``); every link is TLS.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

# The run config keys the server app reads, with defaults (declared in the app's pyproject).
RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "metric": "hr_mean", "period": "day", "period-start": 0.0, "round-id": "",
    "db": "", "expected": 2, "lower": 50.0, "upper": 110.0, "levels": 1024,
    "epsilon": 1.0, "delta": 1e-6, "min-cohort": 20, "num-shares": 1.0,
    "threshold": 0.5, "timeout": 60.0,
}

_APP_MODULE = '''"""edgetwin's secure-aggregation Flower app (generated; edit edgetwin instead)."""
from edgetwin.sync.collector.flower_server import make_server_app
from edgetwin.sync.flower_client import make_client_app

server_app = make_server_app()
client_app = make_client_app()
'''


# Flower phones home by default (usage telemetry, update checks); a health-data aggregator
# and a person's device must not. Every Flower process edgetwin starts gets these.
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def flower_env(**extra: str) -> dict[str, str]:
    """The environment for Flower processes: this one, no telemetry, the venv's scripts."""
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    return {**os.environ, **QUIET_ENV, "PATH": path, **extra}


def write_app(directory: Path, module_source: str | None = None) -> Path:
    """Write the Flower app directory (pyproject + one module) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    config = "\n".join(f"{k} = {_toml(v)}" for k, v in RUN_CONFIG_DEFAULTS.items())
    (directory / "pyproject.toml").write_text(f'''[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "edgetwin-secagg"
version = "1.0.0"
description = "edgetwin population statistics by SecAgg+ with distributed discrete noise"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "edgetwin"

[tool.flwr.app.components]
serverapp = "edgetwin_secagg_app:server_app"
clientapp = "edgetwin_secagg_app:client_app"

[tool.flwr.app.config]
{config}
''', encoding="utf-8")
    (directory / "edgetwin_secagg_app.py").write_text(module_source or _APP_MODULE,
                                                     encoding="utf-8")
    return directory


def write_cli_config(flwr_home: Path, name: str, address: str, ca_file: Path) -> Path:
    """The flwr CLI's connection file (``$FLWR_HOME/config.toml``) naming one SuperLink."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\n'
                    f'address = "{address}"\nroot-certificates = "{ca_file}"\n',
                    encoding="utf-8")
    return path


def generate_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """A P-384 key pair for Flower's SuperNode authentication (private key 0600, OpenSSH)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = directory / f"{name}.key"
    public = directory / f"{name}.pub"
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.OpenSSH,
                                  serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    return private, public


def tool(name: str) -> str:
    """A Flower console script next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: pip install 'edgetwin[secagg]'")
    return found


def superlink_command(*, host: str, port: int, cert: Path, key: Path, ca: Path,
                      database: Path | None = None) -> list[str]:
    """flower-superlink with TLS, SuperNode authentication and no runtime installs.

    Without ``database`` the SuperLink keeps its state in memory: with its SQLite file, 30
    devices on two busy cores made it answer "database is locked" (HTTP 500) to replies,
    which the SuperNode does not retry. A round does not survive a SuperLink restart either way.
    """
    db = [] if database is None else ["--database", str(database)]
    return [tool("flower-superlink"), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
            "--ssl-ca-certfile", str(ca), "--enable-supernode-auth",
            "--disable-runtime-dependency-installation", *db,
            "--host", host, "--port", str(port)]


def supernode_command(*, superlink: str, ca: Path, node_key: Path, runtime_port: int,
                      node_config: dict[str, str]) -> list[str]:
    """flower-supernode over TLS, authenticated with its P-384 key."""
    cfg = " ".join(f'{k}="{v}"' for k, v in node_config.items())
    return [tool("flower-supernode"), "--superlink", superlink, "--root-certificates", str(ca),
            "--auth-supernode-private-key", str(node_key), "--node-config", cfg,
            "--host", "127.0.0.1", "--port", str(runtime_port)]


def run_config_arg(values: dict[str, Any]) -> str:
    """``flwr run --run-config`` text for ``values`` (keys of RUN_CONFIG_DEFAULTS)."""
    unknown = set(values) - set(RUN_CONFIG_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown run config keys {sorted(unknown)}")
    return " ".join(f"{k}={_toml(v)}" for k, v in values.items())


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Aggregator:
    """A SuperLink (TLS, SuperNode auth) for ``edgetwin collector --flower``; runs rounds."""

    def __init__(self, workdir: Path, *, host: str, port: int, cert: Path, key: Path,
                 ca: Path) -> None:
        self.workdir = workdir
        self.address = f"{host}:{port}"
        self.host, self.port = host, port
        self.cert, self.key, self.ca = cert, key, ca
        self.flwr_home = workdir / "flwr"
        self.env = flower_env(FLWR_HOME=str(self.flwr_home))
        self.app = write_app(workdir / "app")
        write_cli_config(self.flwr_home, "edgetwin", self.address, ca)
        self._proc: Any = None
        self._log: Any = None

    def start(self, wait_s: float = 60.0) -> None:
        """Start the SuperLink and wait until it accepts connections."""
        import socket
        import subprocess
        import time

        self._log = (self.workdir / "superlink.log").open("ab")
        self._proc = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            superlink_command(host=self.host, port=self.port, cert=self.cert, key=self.key,
                              ca=self.ca),
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"flower-superlink exited ({self._proc.returncode}); see "
                                   f"{self.workdir / 'superlink.log'}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"flower-superlink did not listen on {self.address} in {wait_s} s")

    def register(self, public_key: Path) -> str:
        """Enroll a device's P-384 public key (OpenSSH format) with the SuperLink."""
        import subprocess

        r = subprocess.run(  # noqa: S603 - our own argv, no shell
            [tool("flwr"), "supernode", "register", str(public_key), "edgetwin"],
                           env=self.env, capture_output=True, text=True, timeout=120,
                           check=False)
        if r.returncode != 0:
            raise RuntimeError(f"registering {public_key} failed: {(r.stdout + r.stderr)[-500:]}")
        return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""

    def run_round(self, run_config: dict[str, Any], timeout: float = 3600.0) -> str:
        """``flwr run`` one round and wait for it; returns Flower's output."""
        import subprocess

        r = subprocess.run(  # noqa: S603 - our own argv, no shell
            [tool("flwr"), "run", str(self.app), "edgetwin", "--stream",
                            "--run-config", run_config_arg(run_config)], env=self.env,
                           capture_output=True, text=True, timeout=timeout, check=False,
                           cwd=self.app)
        if r.returncode != 0:
            raise RuntimeError(f"flwr run failed: {(r.stdout + r.stderr)[-800:]}")
        return r.stdout + r.stderr

    def stop(self) -> None:
        """Stop the SuperLink and the processes it started (Flower detaches its SuperExec)."""
        import signal

        if self._proc is None:
            return
        for pid in descendants(self._proc.pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        self._proc.terminate()
        try:
            self._proc.wait(timeout=15)
        except Exception:  # noqa: BLE001 - a stuck SuperLink is killed
            self._proc.kill()
            self._proc.wait()
        if self._log is not None:
            self._log.close()
        self._proc = None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out
