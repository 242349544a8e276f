"""Typed configuration: ``config.toml`` in the twin home, parsed once.

Every section is a frozen dataclass whose defaults live here and nowhere else.
Loading checks every key and value and fails with the file, the key, what is
wrong and, for an unknown key, the closest known one.

Sensitive settings (paired devices, their addresses) are not here: they live
encrypted in the store. This file holds only behaviour.
"""

from __future__ import annotations

import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from edgetwin.errors import ConfigError

CONFIG_FILE = "config.toml"


@dataclass(frozen=True)
class TwinConfig:
    """The twin's clock."""

    step_s: float = 5.0  # one feature frame per step

    def validate(self) -> None:
        _positive("twin.step_s", self.step_s)


@dataclass(frozen=True)
class DaemonConfig:
    """Supervisor, hub and persistence cadence."""

    flush_interval_s: float = 1.0  # at most this much committed work is lost on SIGKILL
    # per consumer; beyond either bound the oldest batch is dropped. The soak's reference load
    # publishes ~157 KB/s in ~34 batches/s, so 16 MiB is ~100 s of it: a writer held up that
    # long (a slow fsync on a busy host) loses nothing
    hub_queue_batches: int = 8192
    hub_queue_mib: float = 16.0
    watchdog_s: float = 10.0  # a source silent this long is reconnected
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    # while commits fail (a full disk), samples buffered past this are shed, oldest first; they
    # wait packed (the reference load's float64 arrays would take ~490 MB an hour)
    max_uncommitted_mib: float = 64.0

    def validate(self) -> None:
        _positive("daemon.flush_interval_s", self.flush_interval_s)
        _positive("daemon.max_uncommitted_mib", self.max_uncommitted_mib)
        _positive("daemon.hub_queue_batches", self.hub_queue_batches)
        _positive("daemon.hub_queue_mib", self.hub_queue_mib)
        _positive("daemon.watchdog_s", self.watchdog_s)
        _positive("daemon.backoff_initial_s", self.backoff_initial_s)
        if self.backoff_max_s < self.backoff_initial_s:
            raise _bad("daemon.backoff_max_s", "must be >= daemon.backoff_initial_s")


@dataclass(frozen=True)
class RetentionConfig:
    """How long each kind of data is kept; 0 keeps it forever."""

    raw_days: int = 30
    features_days: int = 365
    predictions_days: int = 365
    # room the twin keeps on its disk: below it, the oldest whole days of raw samples go
    # first (never today's or yesterday's), checked every minute; 0 turns it off. At the
    # soak's reference load raw samples take ~8 GiB a day: a 32 GB card fills in days,
    # long before raw_days
    min_free_mib: int = 1024

    def validate(self) -> None:
        for name in ("raw_days", "features_days", "predictions_days"):
            if getattr(self, name) < 0:
                raise _bad(f"retention.{name}", "must be 0 (keep forever) or a number of days")
        if self.min_free_mib < 0:
            raise _bad("retention.min_free_mib", "must be 0 (off) or a number of MiB to keep "
                       "free on the twin's disk")


@dataclass(frozen=True)
class InferenceConfig:
    """On-device models."""

    enabled: bool = True
    precision: str = "int8"  # int8 | fp32
    intra_op_threads: int = 1

    def validate(self) -> None:
        if self.precision not in ("int8", "fp32"):
            raise _bad("inference.precision", f"is {self.precision!r}; use 'int8' or 'fp32'")
        _positive("inference.intra_op_threads", self.intra_op_threads)


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy: budget caps and clipping bounds per metric.

    The unit of privacy is one person's data in one accounting ``period``;
    ``epsilon_per_period`` caps what all releases touching one period may
    spend, ``epsilon_lifetime`` caps the sum of everything ever released.
    """

    period: str = "day"  # accounting period of the budget: day | hour (UTC)
    epsilon_per_release: float = 0.5
    epsilon_per_period: float = 2.0
    epsilon_lifetime: float = 100.0
    # metric -> [lower, upper]; overrides the documented defaults in edgetwin.privacy.metrics
    bounds: dict[str, list[float]] = field(default_factory=dict)
    backfill_days: int = 7  # a new consent may release complete periods this far back
    min_frames: int = 12  # a period with fewer usable frames of a metric is not released
    active_motion_g: float = 0.1  # motion (SD of |accel|, g) above this counts as active
    release_delay_s: float = 900.0  # wait this long after a period ends (late frames)

    def validate(self) -> None:
        if self.period not in ("day", "hour"):
            raise _bad("privacy.period", f"is {self.period!r}; use 'day' or 'hour'")
        _positive("privacy.epsilon_per_release", self.epsilon_per_release)
        _positive("privacy.epsilon_per_period", self.epsilon_per_period)
        _positive("privacy.epsilon_lifetime", self.epsilon_lifetime)
        if self.epsilon_per_release > self.epsilon_per_period:
            raise _bad(
                "privacy.epsilon_per_release",
                f"{self.epsilon_per_release} exceeds privacy.epsilon_per_period "
                f"{self.epsilon_per_period}; no release could ever be made",
            )
        if self.epsilon_per_period > self.epsilon_lifetime:
            raise _bad(
                "privacy.epsilon_per_period",
                f"{self.epsilon_per_period} exceeds privacy.epsilon_lifetime "
                f"{self.epsilon_lifetime}",
            )
        if self.backfill_days < 0:
            raise _bad("privacy.backfill_days", f"is {self.backfill_days}; must be 0 or more")
        _positive("privacy.min_frames", self.min_frames)
        _positive("privacy.active_motion_g", self.active_motion_g)
        if self.release_delay_s < 0:
            raise _bad("privacy.release_delay_s", f"is {self.release_delay_s}; must be 0 or more")
        # The metric catalogue is a pure module (no heavy imports); imported here so a typo in
        # a bounds key fails at load with did-you-mean instead of at the first sync.
        from edgetwin.privacy.metrics import METRICS

        for metric, pair in self.bounds.items():
            key = f"privacy.bounds.{metric}"
            if metric not in METRICS:
                close = difflib.get_close_matches(metric, METRICS, n=1)
                hint = (
                    f"did you mean 'privacy.bounds.{close[0]}'?"
                    if close
                    else f"known metrics: {', '.join(METRICS)}"
                )
                raise ConfigError(f"unknown metric in '{key}'", hint=hint)
            if len(pair) != 2 or not all(isinstance(x, int | float) for x in pair):
                raise _bad(key, "must be [lower, upper]")
            if not pair[0] < pair[1]:
                raise _bad(key, f"lower {pair[0]} must be below upper {pair[1]}")


@dataclass(frozen=True)
class SyncConfig:
    """Upload behaviour; where releases go is an encrypted record (``sync configure``)."""

    timeout_s: float = 15.0  # one HTTPS request or MQTT publish acknowledgement
    backoff_initial_s: float = 30.0  # first retry of a failed upload
    backoff_max_s: float = 3600.0  # retries never wait longer than this
    max_per_run: int = 1000  # uploads attempted by one drain of the outbox
    interval_s: float = 900.0  # how often the daemon releases what is due and drains the outbox

    def validate(self) -> None:
        _positive("sync.timeout_s", self.timeout_s)
        _positive("sync.backoff_initial_s", self.backoff_initial_s)
        if self.backoff_max_s < self.backoff_initial_s:
            raise _bad("sync.backoff_max_s", "must be >= sync.backoff_initial_s")
        _positive("sync.max_per_run", self.max_per_run)
        if not 10.0 <= self.interval_s <= 86_400.0:
            raise _bad("sync.interval_s", "must be between 10 and 86400 seconds")


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation with distributed discrete noise (docs/secagg.md); off by default.

    ``modes`` maps a metric to ``"local"`` (its own Laplace release, the default) or
    ``"secagg"`` (a discrete Gaussian share that only enters a Flower SecAgg+ round).
    The central epsilon is ``privacy.epsilon_per_release``.
    """

    modes: dict[str, str] = field(default_factory=dict)
    delta: float = 1e-6  # the (epsilon, delta) of the aggregate
    min_cohort: int = 20  # honest survivors the guarantee assumes; fewer: nothing published
    levels: int = 1024  # integer grid points across a metric's bounds
    charge: str = "central"  # what the ledger is charged: "central" or "own_share" epsilon

    def validate(self) -> None:
        from edgetwin.privacy.metrics import METRICS

        for metric, mode in self.modes.items():
            if metric not in METRICS:
                close = difflib.get_close_matches(metric, METRICS, n=1)
                hint = f"did you mean '{close[0]}'?" if close else "see 'edgetwin consent list'"
                raise ConfigError(f"unknown metric in 'secagg.modes.{metric}'", hint=hint)
            if mode not in ("local", "secagg"):
                raise _bad(f"secagg.modes.{metric}", f"is {mode!r}; use 'local' or 'secagg'")
        if not 0 < self.delta < 1e-3:
            raise _bad("secagg.delta", f"is {self.delta}; use a value in (0, 0.001)")
        if self.min_cohort < 2:
            raise _bad("secagg.min_cohort", f"is {self.min_cohort}; must be 2 or more")
        if not 2 <= self.levels <= 1 << 20:
            raise _bad("secagg.levels", f"is {self.levels}; use 2..1048576")
        if self.charge not in ("central", "own_share"):
            raise _bad("secagg.charge", f"is {self.charge!r}; use 'central' or 'own_share'")

    def mode(self, metric: str) -> str:
        """``"secagg"`` or ``"local"`` for ``metric``."""
        return self.modes.get(metric, "local")


@dataclass(frozen=True)
class LslConfig:
    """Lab Streaming Layer outlets published by the daemon (``daemon run --lsl`` too)."""

    enabled: bool = False
    raw: bool = True  # one outlet per raw source stream
    features: bool = True  # the feature timeline, one channel per feature
    forecasts: bool = True  # one outlet per forecast target: horizon, band low/high
    markers: bool = True  # the twin's markers as an LSL "Markers" string stream
    prefix: str = "edgetwin"  # outlet names are "<prefix>.<stream>", "<prefix>.features", ...
    max_buffered_s: int = 30  # what an outlet keeps for a slow inlet (liblsl's default is 360)

    def validate(self) -> None:
        if not self.prefix or not all(c.isalnum() or c in "._-" for c in self.prefix):
            raise _bad("lsl.prefix", f"is {self.prefix!r}; use letters, digits, '.', '_' or '-'")
        _positive("lsl.max_buffered_s", self.max_buffered_s)


@dataclass(frozen=True)
class DashboardConfig:
    """The local web dashboard the daemon serves (``edgetwin dashboard`` without a daemon)."""

    enabled: bool = True
    host: str = "127.0.0.1"  # loopback only unless allow_remote and TLS are both set
    port: int = 8765
    tls_cert: str = ""  # PEM certificate chain file; with tls_key, the dashboard speaks HTTPS
    tls_key: str = ""  # its private key (PEM)
    allow_remote: bool = False  # listening beyond loopback also needs tls_cert and tls_key

    def validate(self) -> None:
        import ipaddress

        if not 0 < self.port < 65536:
            raise _bad("dashboard.port", f"is {self.port}; use 1..65535")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise _bad("dashboard.tls_cert", "and dashboard.tls_key must be given together")
        if self.host in ("localhost", ""):
            loopback = self.host == "localhost"
        else:
            try:
                loopback = ipaddress.ip_address(self.host).is_loopback
            except ValueError:
                loopback = False  # a name other than localhost may resolve anywhere
        if not loopback and not (self.allow_remote and self.tls_cert):
            raise _bad(
                "dashboard.host",
                f"is {self.host!r}, beyond loopback: the dashboard shows health data, so "
                "set allow_remote = true and tls_cert / tls_key too, or use 127.0.0.1",
            )


@dataclass(frozen=True)
class LocationConfig:
    """Location from gpsd: stored coarsened to a grid, the exact fix only if the person asks."""

    precision_m: float = 1000.0  # grid cell size in metres; a fix is stored as its cell's centre
    exact: bool = False  # true stores the exact fix too (it never leaves the device either way)
    regular_days: int = 3  # a cell visited on this many days (of the last 28) is a regular place

    def validate(self) -> None:
        if not 10.0 <= self.precision_m <= 100_000.0:
            raise _bad("location.precision_m", f"is {self.precision_m:g}; use 10 to 100000 "
                       "metres (1000, about a neighbourhood, is the default)")
        if not 1 <= self.regular_days <= 28:
            raise _bad("location.regular_days", f"is {self.regular_days}; use 1 to 28 days")


@dataclass(frozen=True)
class Config:
    """The whole configuration of one twin."""

    twin: TwinConfig = field(default_factory=TwinConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    lsl: LslConfig = field(default_factory=LslConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    location: LocationConfig = field(default_factory=LocationConfig)

    def validate(self) -> None:
        for f in fields(self):
            getattr(self, f.name).validate()


def load_config(home: Path) -> Config:
    """Read ``home/config.toml``; a missing file means all defaults."""
    path = home / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}", hint="check its permissions") from exc
    return parse_config(text, source=str(path))


def parse_config(text: str, *, source: str = CONFIG_FILE) -> Config:
    """Parse TOML text into a validated :class:`Config`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}", hint="fix the syntax") from exc
    try:
        config: Config = _build(Config, raw, "")
        config.validate()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}", hint=exc.hint) from None
    return config


def default_config_text() -> str:
    """The config file written by ``edgetwin init``: every default, commented."""
    lines = ["# edgetwin configuration; every key shown with its default.", ""]
    default = Config()
    for section in fields(default):
        lines.append(f"[{section.name}]")
        value = getattr(default, section.name)
        for f in fields(value):
            lines.append(f"# {f.name} = {_toml_value(getattr(value, f.name))}")
        lines.append("")
    return "\n".join(lines)


# -- private helpers ---------------------------------------------------------


def _build(cls: type[Any], raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise _bad(where, "must be a table")
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else (
                f"known keys: {', '.join(sorted(known))}"
            )
            raise ConfigError(f"unknown key '{prefix}{key}'", hint=hint)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        kind = hints[name]
        if is_dataclass(kind):
            kwargs[name] = _build(typing.cast("type[Any]", kind), value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(kind, value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(kind: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    if kind is bool:
        if not isinstance(value, bool):
            raise _bad(key, f"is {value!r}; expected true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(key, f"is {value!r}; expected a whole number")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(key, f"is {value!r}; expected a number")
        if not math.isfinite(value):
            raise _bad(key, "must be finite")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise _bad(key, f"is {value!r}; expected a string")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(key, "must be a table")
        _, vkind = typing.get_args(kind)
        return {k: _coerce(vkind, v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise _bad(key, "must be a list")
        (ikind,) = typing.get_args(kind)
        return [_coerce(ikind, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(kind):
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError:
                continue
        raise _bad(key, f"is {value!r}; expected {kind}")
    raise _bad(key, f"has unsupported type {kind}")  # a bug in a section definition


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise _bad(key, f"is {value}; must be greater than 0")


def _bad(key: str, problem: str) -> ConfigError:
    return ConfigError(
        f"{key} {problem}", hint="edit config.toml, or delete the key to use the default"
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{}" if not value else "{ " + ", ".join(
            f"{k} = {_toml_value(v)}" for k, v in value.items()
        ) + " }"
    return repr(value)
