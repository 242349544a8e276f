"""Real peers for the sync tests: a Mosquitto broker, TLS material, a collector, releases."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgetwin.privacy.mechanism import release_value
from edgetwin.privacy.metrics import METRICS
from edgetwin.privacy.release import DPRelease
from edgetwin.sync.collector import Collector
from edgetwin.sync.collector.server import CollectorHTTPServer, HttpLimits

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
DAY = 86_400.0
T0 = 1_750_032_000.0  # a UTC midnight (2025-06-16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def make_release(summary: float = 72.0, metric: str = "hr_mean", start: float = T0,
                 epsilon: float = 0.5) -> DPRelease:
    """A genuine release through the real mechanism (no store needed)."""
    m = METRICS[metric]
    return release_value(m, "day", start, summary, m.default_bounds, epsilon)


@dataclass
class Broker:
    """A real Mosquitto on a loopback port; stop/start keep the port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    tls: tuple[Path, Path] | None = None  # (cert, key) for a TLS listener
    extra: list[str] = field(default_factory=list)  # more mosquitto.conf lines

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true",
                 "persistence false", "log_type error", "log_dest stderr"]
        if self.tls:
            lines += [f"certfile {self.tls[0]}", f"keyfile {self.tls[1]}"]
        lines += self.extra
        if os.geteuid() == 0:
            # Run as root, mosquitto drops to user 'mosquitto', which cannot read our 0600 key.
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(self.port)
        except TimeoutError:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
            self.proc = None
            raise RuntimeError(f"mosquitto did not start: {err.decode(errors='replace')}") from None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            assert self.proc.stderr is not None
            self.proc.stderr.close()
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without a goodbye."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        self.proc = None


@dataclass
class Tls:
    """A CA, a server certificate for 127.0.0.1/localhost signed by it, and an unrelated CA."""

    ca: Path
    cert: Path
    key: Path
    wrong_ca: Path


def make_tls(d: Path) -> Tls:
    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)

    def ca_cert(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        k = ec.generate_private_key(ec.SECP256R1())
        c = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(hours=1))
             .not_valid_after(now + dt.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                          False), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()),
                            critical=False)
             .sign(k, hashes.SHA256()))
        return k, c

    ca_key, ca = ca_cert("edgetwin test CA")
    _, wrong = ca_cert("some other CA")
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
           .public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - dt.timedelta(hours=1))
           .not_valid_after(now + dt.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName([
               x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
               critical=False)
           .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
           .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                          critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                          critical=False)
           .sign(ca_key, hashes.SHA256()))
    out = Tls(d / "ca.pem", d / "server.pem", d / "server.key", d / "wrong-ca.pem")
    out.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.wrong_ca.write_bytes(wrong.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(srv_key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    out.key.chmod(0o600)
    return out


@dataclass
class RunningCollector:
    """A real collector serving HTTP(S) on a loopback port, capturing every body it receives."""

    collector: Collector
    server: CollectorHTTPServer
    received: list[tuple[bytes, str]]

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self) -> None:
        self.server.stop()


def start_collector(db: Path | str, *, tls: Tls | None = None, port: int = 0,
                    received: list[tuple[bytes, str]] | None = None,
                    token: str | None = None,
                    limits: HttpLimits | None = None) -> RunningCollector:
    got: list[tuple[bytes, str]] = [] if received is None else received
    collector = Collector(db, tap=lambda body, transport: got.append((body, transport)))
    server = CollectorHTTPServer(("127.0.0.1", port), collector,
                                 tls_cert=tls.cert if tls else None,
                                 tls_key=tls.key if tls else None, token=token, limits=limits)
    server.start()
    return RunningCollector(collector, server, got)


PASSPHRASE = "correct horse battery staple"


def make_twin(home: Path):  # type: ignore[no-untyped-def]
    """A fresh TwinStore in ``home`` with cheap KDF parameters."""
    from edgetwin.store import KdfParams, Secret, TwinStore

    return TwinStore.create(home, Secret.passphrase(PASSPHRASE), kdf=KdfParams.for_tests())


def open_twin(home: Path):  # type: ignore[no-untyped-def]
    from edgetwin.store import Secret, TwinStore

    return TwinStore.open(home, Secret.passphrase(PASSPHRASE))


def write_days(store, first_day: float, days: int, *, step: float = 60.0,  # type: ignore[no-untyped-def]
               seed: int = 1) -> dict[str, list[float]]:
    """Commit raw HR samples and feature frames for whole UTC days; returns what was written.

    Values carry many random decimals so a leak of any one of them would be recognisable.
    """
    import numpy as np

    from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION
    from edgetwin.types import FeatureFrame, SampleBatch

    rng = np.random.default_rng(seed)
    written: dict[str, list[float]] = {"samples": [], "frames": []}
    for d in range(days):
        t = first_day + d * DAY + np.arange(step, DAY + step / 2, step)
        n = t.size
        raw_hr = rng.normal(68.0, 9.0, n) + rng.uniform(0, 1e-3, n)
        store.append_samples(SampleBatch.build("wrist", ["hr"], t, raw_hr[:, None]))
        written["samples"].extend(raw_hr.tolist())
        frames = []
        for i in range(n):
            values = np.full(len(NAMES), np.nan)
            values[INDEX["hr"]] = raw_hr[i] + rng.uniform(-0.5, 0.5)
            values[INDEX["rmssd"]] = rng.normal(42.0, 8.0)
            values[INDEX["spo2"]] = rng.normal(97.0, 0.8)
            values[INDEX["skin_temp"]] = rng.normal(33.4, 0.4)
            values[INDEX["motion"]] = abs(rng.normal(0.05, 0.08))
            values[INDEX["eeg_alpha"]] = rng.uniform(0.05, 0.4)
            values[INDEX["fnirs_hbo"]] = rng.normal(0.2, 0.6)
            frames.append(FeatureFrame(
                t=float(t[i]), values=values, quality=np.ones(len(NAMES)),
                imputed=np.zeros(len(NAMES), dtype=bool), schema_version=SCHEMA_VERSION))
            written["frames"].extend(float(v) for v in values if np.isfinite(v))
        store.append_frames(frames)
    store.commit()
    return written


def _postgres_bin() -> Path:
    """Debian's PostgreSQL server binaries (scripts/bootstrap --dev installs them)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL's initdb not found: install Debian's 'postgresql' "
                           "(scripts/bootstrap --dev does)")
    return Path(initdb).resolve().parent


@dataclass
class Postgres:
    """A private PostgreSQL server: its own data directory, loopback port and socket dir.

    PostgreSQL refuses to run as root, so as root its programs run as user 'postgres'.
    """

    port: int = field(default_factory=free_port)
    datadir: Path | None = None
    fsync: bool = False  # tests need no durability; the collector benchmark does
    _n: int = 0

    def _as_owner(self, *cmd: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)

    def start(self) -> None:
        import tempfile

        pg = _postgres_bin()
        # Not under pytest's tmp dirs: those are 0700 root, which user 'postgres' cannot enter.
        base = Path(tempfile.mkdtemp(prefix="edgetwin-pg-"))
        if os.geteuid() == 0:
            shutil.chown(base, "postgres", "postgres")
        self.datadir = base / "data"
        opts = (f"-p {self.port} -k {base} -c listen_addresses=127.0.0.1 "
                f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=200")
        for cmd in ([str(pg / "initdb"), "-D", str(self.datadir), "-A", "trust", "-U",
                     "postgres", "-E", "UTF8", "--no-sync", "--locale=C"],
                    [str(pg / "pg_ctl"), "-D", str(self.datadir), "-l", str(base / "log"),
                     "-w", "-t", "60", "-o", opts, "start"]):
            done = subprocess.run(self._as_owner(*cmd), check=False, capture_output=True,
                                  text=True, timeout=120)
            if done.returncode != 0:
                log = base / "log"
                raise RuntimeError(f"{cmd[0]} failed: {done.stderr or done.stdout}"
                                   + (log.read_text() if log.exists() else ""))

    def stop(self) -> None:
        if self.datadir is None:
            return
        subprocess.run(self._as_owner(str(_postgres_bin() / "pg_ctl"), "-D", str(self.datadir),
                                      "-m", "immediate", "-w", "stop"),
                       check=False, capture_output=True, timeout=60)
        shutil.rmtree(self.datadir.parent, ignore_errors=True)
        self.datadir = None

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        self._n += 1
        name = f"collector_{os.getpid()}_{self._n}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)
