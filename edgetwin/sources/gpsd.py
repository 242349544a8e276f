"""Location from ``gpsd`` (``pair add gpsd``), coarsened before anything keeps it.

Client: gpsd's own JSON protocol spoken over an asyncio stream, not a library.
The candidates were read first: ``gps`` 3.19 on PyPI (2019) is the gpsd
project's client but years behind the daemon Debian ships (3.22 here) and
blocking; ``gpsdclient`` 1.3.2 (last release January 2023) is a small blocking
socket reader that would need a worker thread per source, and both decode with
plain ``json.loads`` (NaN accepted, no size or depth limits, errors that quote
the offending text). The protocol the twin needs is one command
(``?WATCH={"enable":true,"json":true}``) and newline-delimited JSON objects
(``VERSION`` banner, then ``DEVICES``, ``WATCH``, ``TPV``, ``SKY``, ...), so it is
read here with ``edgetwin.untrusted_json`` (bounded depth and numbers, NaN
refused) on the event loop with no thread and no dependency, and every
malformed line gets a precise error that never quotes the line: a gpsd line
holds the exact position.

The pairing record::

    {"kind": "gpsd", "host": "127.0.0.1", "port": 2947}

Stream ``<name>.location``, one row per fix (``TPV`` with mode >= 2), channels:
``lat``, ``lon`` (degrees, the centre of the fix's ``precision_m`` grid cell
unless the person set ``[location] exact = true``), ``place`` (0 home, 1 a
regular place, 2 elsewhere; NaN until learned) and ``homedist`` (km from the
home cell; NaN while home is unknown), see :mod:`edgetwin.sources.place`. The
sample time is the fix's own ``time`` (GPS time is UTC), else the receive time.
The exact fix lives only in local variables of :meth:`GpsdSource._fix` and is
never logged, put in an error, in ``meta`` or in the place memory, which learns
from the coarse cells alone.

The place memory (what the learner needs across restarts) is handed in by the
daemon (:class:`PlaceMemory`; the store seals it as a record): sources never
import the store. When the stored location stream is gone (``forget``) or starts
later than the memory (``forget --before``, retention), the memory is cut to
match (by local day): when loaded, and every ``CHECK_EVERY_S`` while running.

Reconnects: gpsd closing the socket, a read timing out or too many malformed
lines in a row end the session with ``TransientSourceError``; the runner's
backoff reconnects. Nothing answering at the address is ``DeviceNotFound``;
something answering that is not gpsd is ``PairingRefused``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, tzinfo
from typing import Any, Protocol

import edgetwin.clock as twin_clock
from edgetwin.errors import DeviceNotFound, PairingRefused, TransientSourceError
from edgetwin.sources.base import Source
from edgetwin.sources.place import Grid, PlaceLearner
from edgetwin.types import SampleBatch
from edgetwin.untrusted_json import UntrustedJsonError
from edgetwin.untrusted_json import loads as untrusted_loads

__all__ = [
    "CHANNELS",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "PLACE_RECORD",
    "GpsdSource",
    "PlaceMemory",
    "RecordPlaceMemory",
    "parse_tpv",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2947
CHANNELS = ("lat", "lon", "place", "homedist")
UNITS = ("deg", "deg", "code", "km")
STREAM_SUFFIX = "location"
PLACE_RECORD = "place"  # record kind of the place memory, keyed by source name
WATCH = b'?WATCH={"enable":true,"json":true}\n'
MAX_LINE = 64 * 1024  # gpsd's longest reports (SKY with many satellites) are a few kB
MAX_BAD_IN_A_ROW = 20  # then the peer is broken: reconnect
CONNECT_TIMEOUT_S = 5.0
SAVE_EVERY_S = 60.0  # the place memory is sealed at most this often (and at close)
# how often a running source compares its memory with the stored location history (a
# forget through the running daemon, retention), cutting what is gone
CHECK_EVERY_S = 600.0


class PlaceMemory(Protocol):
    """Where the place learner's state is kept between runs (sealed by the store)."""

    def load(self) -> tuple[dict[str, Any] | None, bool, float | None]:
        """(saved state or None, whether the location stream is stored, its first time)."""
        ...

    def save(self, state: dict[str, Any]) -> None: ...


class _Records(Protocol):
    def get_record(self, kind: str, key: str) -> dict[str, Any] | None: ...
    def put_record(self, kind: str, key: str, value: dict[str, Any]) -> None: ...
    def streams(self) -> Any: ...


class RecordPlaceMemory:
    """A :class:`PlaceMemory` in the twin's encrypted records (``("place", source name)``);
    takes the store by its methods, so this module never imports it."""

    def __init__(self, records: _Records, name: str) -> None:
        self.records = records
        self.name = name
        self.stream = f"{name}.{STREAM_SUFFIX}"

    def load(self) -> tuple[dict[str, Any] | None, bool, float | None]:
        state = self.records.get_record(PLACE_RECORD, self.name)
        for info in self.records.streams():
            if info.name == self.stream and info.samples:
                return state, True, info.first_t
        return state, False, None

    def save(self, state: dict[str, Any]) -> None:
        self.records.put_record(PLACE_RECORD, self.name, state)


class GpsdSource(Source):
    """Fixes from gpsd's JSON socket, coarsened, with the learned place and home distance."""

    kind = "gpsd"
    # gpsd reports nothing while the receiver has no fix (indoors): silence is normal
    silence_tolerance_s = 900.0

    def __init__(
        self,
        name: str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        precision_m: float = 1000.0,
        exact: bool = False,
        regular_days: int = 3,
        memory: PlaceMemory | None = None,
        tz: tzinfo | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        super().__init__(name)
        if not 0 < int(port) < 65536:
            raise ValueError(f"port {port} is not in 1..65535")
        self.host = str(host)
        self.port = int(port)
        self.stream_name = f"{name}.{STREAM_SUFFIX}"
        self.connect_timeout_s = connect_timeout_s
        self.tz = tz
        self.memory = memory
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last_t = -math.inf
        self._line = 0
        self._saved_at = -math.inf
        self._checked_at = time.monotonic()
        self.check_every_s = CHECK_EVERY_S
        self.save_every_s = SAVE_EVERY_S
        self._loaded = False
        self.configure(precision_m=precision_m, exact=exact, regular_days=regular_days)

    @classmethod
    def from_record(cls, name: str, record: Mapping[str, Any], **kwargs: Any) -> GpsdSource:
        """A source from a ``pair add gpsd`` record (see the module docstring)."""
        return cls(name, str(record["host"]), int(record["port"]), **kwargs)

    def configure(
        self,
        *,
        precision_m: float,
        exact: bool,
        regular_days: int = 3,
        memory: PlaceMemory | None = None,
    ) -> None:
        """Apply the person's ``[location]`` settings (and the daemon's place memory)."""
        self.grid = Grid(float(precision_m))
        self.exact = bool(exact)
        self.regular_days = int(regular_days)
        if memory is not None:
            self.memory = memory
        self.learner = PlaceLearner(self.grid, regular_days=self.regular_days, tz=self.tz)
        self._loaded = False

    def describe(self) -> dict[str, Any]:
        return {
            "streams": [self.stream_name],
            "precision_m": self.grid.precision_m,
            "exact": self.exact,
            "home_learned": self.learner.home is not None,
            "regular_places": len(self.learner.regular),
            **{k: v for k, v in self.counters.extra.items()
               if k in ("no_fix", "gpsd_release", "last_problem")},
        }

    async def connect(self) -> None:
        """Open gpsd's socket, check its VERSION banner and ask for JSON reports."""
        if self._writer is not None:
            return
        if not self._loaded:  # first: a forgotten history is cut even while gpsd is away
            await self._load_memory()
        where = f"gpsd at {self.host}:{self.port}"
        try:
            # asyncio.timeout keeps a cancel that lands as the connect finishes (3.11's
            # wait_for loses it)
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port,
                                                               limit=MAX_LINE)
        except (OSError, TimeoutError) as exc:
            raise DeviceNotFound(
                f"{where} does not answer ({type(exc).__name__}: {exc.strerror or exc})"
                if isinstance(exc, OSError) else f"{where} did not answer within "
                f"{self.connect_timeout_s:g} s",
                hint="start gpsd (e.g. 'systemctl start gpsd') or pair with --host/--port",
            ) from exc
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                banner = await reader.readline()
            release = self._check_banner(banner, where)
            writer.write(WATCH)
            await writer.drain()
        except BaseException as exc:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if isinstance(exc, TimeoutError):
                raise PairingRefused(
                    f"{where} accepted the connection but sent no gpsd VERSION banner within "
                    f"{self.connect_timeout_s:g} s", hint="is that port really gpsd's?") from exc
            if isinstance(exc, OSError | ValueError):
                raise TransientSourceError(f"{where}: connection lost during the greeting "
                                           f"({type(exc).__name__})", hint="reconnecting") from exc
            raise
        self._reader, self._writer = reader, writer
        self._line = 1
        self.counters.extra["gpsd_release"] = release
        _LOGGER.info("%s (gpsd %s) watched for %s", where, release, self.name)

    async def devices(self, wait_s: float) -> int | None:
        """After ``connect``: how many receivers gpsd's DEVICES report lists (None: no report
        within ``wait_s``); for ``pair add gpsd``, before any fix is read."""
        reader = self._reader
        if reader is None:
            raise TransientSourceError(f"source {self.name!r} is not connected",
                                       hint="call connect() first")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while loop.time() < deadline:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that lands
                # as the line arrives, and the pairing went on reading
                async with asyncio.timeout_at(deadline):
                    line = await reader.readline()
            except (TimeoutError, ValueError):
                return None
            if not line:
                return None
            try:
                doc = untrusted_loads(line, max_depth=16)
            except UntrustedJsonError:
                continue
            if isinstance(doc, dict) and doc.get("class") == "DEVICES":
                listed = doc.get("devices")
                return len(listed) if isinstance(listed, list) else 0
        return None

    async def stream(self) -> AsyncIterator[SampleBatch]:
        """One batch per fix until gpsd goes away."""
        reader = self._reader
        if reader is None:
            raise TransientSourceError(f"source {self.name!r} is not connected",
                                       hint="call connect() first")
        bad_in_a_row = 0
        while True:
            try:
                raw = await reader.readline()
            except ValueError:  # longer than MAX_LINE: asyncio dropped it
                bad_in_a_row = self._bad(f"line {self._line + 1} is longer than {MAX_LINE} "
                                         "bytes", bad_in_a_row)
                self._line += 1
                continue
            except OSError as exc:
                raise TransientSourceError(
                    f"gpsd at {self.host}:{self.port} connection failed: "
                    f"{type(exc).__name__}: {exc.strerror or ''}", hint="reconnecting") from exc
            if not raw:
                raise TransientSourceError(
                    f"gpsd at {self.host}:{self.port} closed the connection",
                    hint="gpsd stopped or restarted; reconnecting")
            self._line += 1
            try:
                fix = parse_tpv(raw)
            except ValueError as exc:
                bad_in_a_row = self._bad(f"line {self._line}: {exc}", bad_in_a_row)
                continue
            bad_in_a_row = 0
            if fix is None:
                continue
            batch = self._fix(*fix)
            if batch is None:
                continue
            self.counters.count(batch)
            yield batch
            await self._maybe_save()

    async def close(self) -> None:
        """Close the socket and seal the place memory; safe to call twice."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        await self._maybe_save(force=True)

    # -- private -------------------------------------------------------------------

    def _fix(self, t: float | None, lat: float, lon: float) -> SampleBatch | None:
        """The row for one fix: the exact position goes no further than this function."""
        if t is None:
            t = twin_clock.now()
        if t <= self._last_t:  # a replayed or reordered report: keep times increasing
            self.counters.drops += 1
            return None
        self._last_t = t
        coarse = self.grid.snap(lat, lon)
        place, homedist = self.learner.observe(t, *coarse)
        shown = (lat, lon) if self.exact else coarse
        return SampleBatch.build(
            self.stream_name, CHANNELS, [t], [[shown[0], shown[1], place, homedist]],
            units=UNITS, meta={"precision_m": self.grid.precision_m, "exact": self.exact})

    def _check_banner(self, banner: bytes, where: str) -> str:
        if not banner:
            raise PairingRefused(f"{where} closed the connection without a greeting",
                                 hint="is that port really gpsd's?")
        try:
            doc = untrusted_loads(banner)
        except UntrustedJsonError as exc:
            raise PairingRefused(f"{where} greeted with something that is not gpsd's JSON "
                                 f"VERSION banner ({exc})",
                                 hint="is that port really gpsd's?") from None
        if not isinstance(doc, dict) or doc.get("class") != "VERSION":
            raise PairingRefused(f"{where} greeted without gpsd's VERSION banner "
                                 f"(first object has class {_class_of(doc)})",
                                 hint="is that port really gpsd's?")
        major = doc.get("proto_major")
        if not isinstance(major, int) or isinstance(major, bool) or major < 3:
            raise PairingRefused(f"{where} speaks gpsd protocol {major!r}; edgetwin needs "
                                 "3 or newer (gpsd 2.90+)", hint="upgrade gpsd")
        release = doc.get("release")
        return release[:32] if isinstance(release, str) else "?"

    def _bad(self, problem: str, bad_in_a_row: int) -> int:
        self.counters.bad_packets += 1
        message = f"gpsd at {self.host}:{self.port} sent a malformed report on {problem}"
        self.counters.extra["last_problem"] = message
        log = _LOGGER.warning if self.counters.bad_packets == 1 else _LOGGER.debug
        log("source %s: %s; skipped", self.name, message)
        if bad_in_a_row + 1 >= MAX_BAD_IN_A_ROW:
            raise TransientSourceError(
                f"gpsd at {self.host}:{self.port} sent {MAX_BAD_IN_A_ROW} malformed reports in "
                f"a row (last: {problem})", hint="reconnecting; check gpsd's version and logs")
        return bad_in_a_row + 1

    async def _load_memory(self) -> None:
        self._loaded = True
        if self.memory is None:
            return
        memory = self.memory
        try:
            state, stored, first_t = await asyncio.to_thread(memory.load)
        except Exception as exc:  # noqa: BLE001 - a damaged memory is relearned, never fatal
            _LOGGER.warning("place memory of %s unreadable (%s); learning afresh",
                            self.name, type(exc).__name__)
            return
        if state is not None:
            if state.get("precision_m") != self.grid.precision_m:
                _LOGGER.info("place memory of %s was learned at another precision; relearning",
                             self.name)
            else:
                try:
                    self.learner = PlaceLearner(self.grid, regular_days=self.regular_days,
                                                tz=self.tz, state=state.get("learner"))
                except (KeyError, TypeError, ValueError, AttributeError, IndexError):
                    _LOGGER.warning("place memory of %s does not decode; learning afresh",
                                    self.name)
        # the memory never outlives the stored stream it was learned from
        if self.learner.trim_before(first_t if stored else None):
            _LOGGER.info("place memory of %s cut to the stored location history", self.name)
            await self._maybe_save(force=True)

    async def _cut_to_history(self, memory: PlaceMemory) -> None:
        """Drop what the learner drew from location samples no longer stored (forgotten while
        the daemon runs, or aged out by retention)."""
        try:
            _, stored, first_t = await asyncio.to_thread(memory.load)
        except Exception as exc:  # noqa: BLE001 - checked again at the next save
            _LOGGER.debug("place memory of %s not checked: %s", self.name, type(exc).__name__)
            return
        if self.learner.trim_before(first_t if stored else None):
            _LOGGER.info("place memory of %s cut to the stored location history", self.name)

    async def _maybe_save(self, *, force: bool = False) -> None:
        if self.memory is None or not self.learner.changed:
            return
        now = time.monotonic()
        if not force and now - self._saved_at < self.save_every_s:
            return
        self._saved_at = now
        if not force and now - self._checked_at >= self.check_every_s:
            self._checked_at = now
            await self._cut_to_history(self.memory)
        doc = {"precision_m": self.grid.precision_m, "learner": self.learner.state()}
        try:
            await asyncio.to_thread(self.memory.save, doc)
        except Exception as exc:  # noqa: BLE001 - the next save retries; fixes keep flowing
            _LOGGER.warning("place memory of %s not saved: %s", self.name, type(exc).__name__)


def parse_tpv(line: bytes) -> tuple[float | None, float, float] | None:
    """A gpsd JSON report: (time or None, lat, lon) for a TPV with a fix, None for other
    reports (and a TPV without a fix); ValueError naming what is wrong (never a value)."""
    try:
        doc = untrusted_loads(line, max_depth=16)
    except UntrustedJsonError as exc:
        raise ValueError(f"not gpsd JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"a JSON {type(doc).__name__}, not a gpsd report object")
    cls = doc.get("class")
    if not isinstance(cls, str):
        raise ValueError("report without a 'class' string")
    if cls == "ERROR":
        message = doc.get("message")
        raise ValueError(f"gpsd ERROR report: {str(message)[:120]!r}")
    if cls != "TPV":
        return None
    mode = doc.get("mode", 0)
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 3:
        raise ValueError("TPV 'mode' is not 0, 1, 2 or 3")
    if mode < 2:
        return None  # no fix yet
    lat = _number(doc, "lat", 90.0)
    lon = _number(doc, "lon", 180.0)
    if lat is None or lon is None:
        return None  # a 2D/3D mode report with the position not yet filled in
    stamp = doc.get("time")
    t: float | None = None
    if stamp is not None:
        if not isinstance(stamp, str) or len(stamp) > 40:
            raise ValueError("TPV 'time' is not an ISO 8601 string")
        try:
            when = datetime.fromisoformat(stamp)
        except ValueError:
            raise ValueError("TPV 'time' is not an ISO 8601 time") from None
        if when.tzinfo is None:
            raise ValueError("TPV 'time' has no time zone (gpsd sends UTC with 'Z')")
        t = when.timestamp()
    return t, lat, lon


def _number(doc: dict[str, Any], key: str, bound: float) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"TPV {key!r} is not a number")
    if not -bound <= value <= bound:
        raise ValueError(f"TPV {key!r} is outside -{bound:g}..{bound:g} degrees")
    return float(value)


def _class_of(doc: Any) -> str:
    if isinstance(doc, dict) and isinstance(doc.get("class"), str):
        return repr(doc["class"][:24])
    return f"none (a JSON {type(doc).__name__})"
