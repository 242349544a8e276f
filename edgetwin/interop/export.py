"""``edgetwin export --format fhir|omh``: write the timeline as FHIR R4 or Open mHealth JSON.

The JSON is streamed into ``FILE.part-*`` (mode 0600: it is health data)
and renamed into place once complete and audited; with ``recipients`` or a
``passphrase`` it is age-encrypted on the way exactly as twin bundles are
(``edgetwin.bundle.age``), so ``age -d -i KEY FILE`` gives the JSON back.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from edgetwin.errors import HomeError, StoreFull, UsageError
from edgetwin.interop.windows import (
    STATISTIC,
    FrameTable,
    Source,
    aggregate,
    iso_utc,
    load_frames,
    sources_of,
)

if TYPE_CHECKING:
    from edgetwin.store import TwinStore

FORMATS = ("fhir", "omh")
PASSPHRASE_LIMIT = 256 * 1024 * 1024

Progress = Callable[[str], None]


@dataclass
class InteropReport:
    """What an export to FHIR or Open mHealth wrote."""

    path: Path
    format: str
    every: str
    mode: str
    bytes: int
    plaintext_bytes: int
    frames: int
    resources: dict[str, int] = field(default_factory=dict)
    forecasts: int = 0
    devices: list[str] = field(default_factory=list)
    first_t: float | None = None
    last_t: float | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "every": self.every,
            "statistic": STATISTIC if self.every != "raw" else None,
            "mode": self.mode,
            "bytes": self.bytes,
            "plaintext_bytes": self.plaintext_bytes,
            "frames": self.frames,
            "resources": self.resources,
            "forecasts": self.forecasts,
            "devices": self.devices,
            "first_t": self.first_t,
            "last_t": self.last_t,
            "seconds": round(self.seconds, 3),
        }


def export_interop(
    store: TwinStore,
    out: Path,
    *,
    fmt: str,
    every: float | None,
    every_text: str,
    step_s: float,
    t0: float | None = None,
    t1: float | None = None,
    with_forecasts: bool = False,
    recipients: list[str] | None = None,
    passphrase: str | None = None,
    force: bool = False,
    passphrase_limit: int = PASSPHRASE_LIMIT,
    progress: Progress | None = None,
) -> InteropReport:
    """Write the frames with ``t0 <= t <= t1`` of ``store`` to ``out`` as ``fmt`` JSON."""
    from edgetwin import __version__
    from edgetwin.bundle import age

    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not an interchange format",
                         hint="use fhir or omh (or leave --format out for a twin bundle)")
    if with_forecasts and fmt != "fhir":
        raise UsageError(
            "--with-forecasts goes with --format fhir",
            hint="Open mHealth has no schema for forecasts; leave --with-forecasts out",
        )
    if recipients is not None and passphrase is not None:
        raise UsageError("give either --recipient or --passphrase, not both")
    parsed = age.parse_recipients(recipients) if recipients is not None else None
    if passphrase is not None and not passphrase:
        raise UsageError("the bundle passphrase is empty")
    if t0 is not None and t1 is not None and t1 < t0:
        raise UsageError(f"--to ({iso_utc(t1)}) is before --from ({iso_utc(t0)})",
                         hint="swap them")
    if every is not None and every < step_s:
        raise UsageError(
            f"--every {every_text} is shorter than the twin's step ({step_s:g} s), so a window "
            "would claim a time its frame does not cover",
            hint=f"use raw for one value per {step_s:g} s frame, or a window of at least that",
        )
    out = Path(out).absolute()
    if out.exists() and not force:
        raise UsageError(f"{out} already exists", hint="choose another name, or pass --force")
    if not out.parent.is_dir():
        raise UsageError(f"the directory of {out} does not exist", hint="create it first")

    say("reading the feature timeline")
    table = load_frames(store, t0, t1)
    if not len(table):
        raise _empty_range(store, t0, t1)
    created = time.time()
    writer: Any
    if fmt == "fhir":
        from edgetwin.interop.fhir import METRICS, FhirWriter

        features = tuple(METRICS)
        sources = _feeding(sources_of(store), features, rr=False)
        _require_values(table, features, rr=False, fmt=fmt)
        preds = store.iter_predictions(t0, t1) if with_forecasts else None
        writer = FhirWriter(aggregate(table, features, every, step_s), sources, every=every,
                            step_s=step_s, created=created, version=__version__,
                            predictions=preds)
    else:
        from edgetwin.interop.omh import BODIES, OmhWriter

        features = tuple(BODIES)
        sources = _feeding(sources_of(store), features, rr=True)
        has_rr = any("rr" in s.kinds for s in sources)
        _require_values(table, features, rr=has_rr, fmt=fmt)
        writer = OmhWriter(aggregate(table, features, every, step_s), sources,
                           _rr_of(store, sources, t0, t1), every=every, created=created,
                           version=__version__)

    mode = "recipients" if parsed is not None else "passphrase" if passphrase else "plain"
    part = out.with_name(f"{out.name}.part-{secrets.token_hex(4)}")
    counter = _Counter(writer.chunks())
    say(f"writing {fmt.upper()} JSON" + ("" if mode == "plain" else f" ({mode}, age)"))
    try:
        try:
            with _exclusive(part) as f:
                if parsed is not None:
                    from edgetwin.bundle.tarstream import IterReader

                    age.encrypt_stream(IterReader(counter), f, parsed)
                elif passphrase is not None:
                    blob = bytearray()
                    for piece in counter:
                        blob += piece
                        if len(blob) > passphrase_limit:
                            raise UsageError(
                                f"this export exceeds {passphrase_limit / 1e6:.0f} MB; passphrase "
                                "files are encrypted in memory",
                                hint="use --recipient with an age-keygen key, a longer --every, "
                                "a narrower --from/--to, or raise --passphrase-limit-mb",
                            )
                    f.write(age.encrypt_passphrase(bytes(blob), passphrase))
                    del blob
                else:
                    for piece in counter:
                        f.write(piece)
                f.flush()
                os.fsync(f.fileno())
            if mode != "plain":
                age.check_written(part, counter.bytes)
            size = part.stat().st_size
            counts = _counts(fmt, writer)
            store.audit(
                "export",
                format=fmt,
                file=str(out),
                mode=mode,
                recipients=[r.strip() for r in recipients] if recipients is not None else [],
                every=every_text,
                t_from=t0,
                t_to=t1,
                bytes=size,
                resources=counts,
                forecasts=writer.counts.forecasts if fmt == "fhir" else 0,
            )
            part.replace(out)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise
    except OSError as exc:
        raise _disk_error(out, exc) from exc
    return InteropReport(
        path=out,
        format=fmt,
        every=every_text,
        mode=mode,
        bytes=size,
        plaintext_bytes=counter.bytes,
        frames=len(table),
        resources=counts,
        forecasts=writer.counts.forecasts if fmt == "fhir" else 0,
        devices=[s.name for s in sources],
        first_t=float(table.t[0]),
        last_t=float(table.t[-1]),
        seconds=time.perf_counter() - started,
    )


class _Counter:
    """Passes byte pieces through and counts them (the plaintext length age is checked against)."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = pieces
        self.bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        for piece in self._pieces:
            self.bytes += len(piece)
            yield piece


def _counts(fmt: str, writer: Any) -> dict[str, int]:
    if fmt == "fhir":
        return dict(writer.counts.observations)
    return dict(writer.counts.points)


def _feeding(sources: list[Source], features: tuple[str, ...], *, rr: bool) -> list[Source]:
    """The streams whose channels feed one of ``features`` (or carry RR, for ``rr``)."""
    from edgetwin.features.schema import SOURCES

    kinds: set[str] = set()
    for name in features:
        kinds |= SOURCES.get(name, frozenset())
    if rr:
        kinds.add("rr")
    return [s for s in sources if s.kinds & kinds]


def _rr_of(
    store: TwinStore, sources: list[Source], t0: float | None, t1: float | None
) -> Iterator[Any]:
    from edgetwin.interop.omh import rr_series

    for s in sources:
        if "rr" in s.kinds:
            series = rr_series(store.read_samples(s.name, t0, t1), s.name)
            if series is not None:
                yield series


def _require_values(table: FrameTable, features: tuple[str, ...], *, rr: bool, fmt: str) -> None:
    """Refuse a range whose frames hold no usable value of any exported feature."""
    cols = [k for k, name in enumerate(table.names) if name in features]
    if rr or (cols and bool(table.usable[:, cols].any())):
        return
    span = f"{iso_utc(float(table.t[0]))} to {iso_utc(float(table.t[-1]))}"
    raise UsageError(
        f"the {len(table)} feature frames from {span} hold no measured value of "
        f"{', '.join(n for n in features if n in table.names)} for --format {fmt}",
        hint="pick a range where a heart-rate, oximeter or temperature sensor was recording "
        "(edgetwin timeline shows which features have values)",
    )


def _empty_range(store: TwinStore, t0: float | None, t1: float | None) -> UsageError:
    """The error for a range without frames, naming the span the twin does hold."""
    first = last = None
    n = 0
    for frame in store.read_frames():
        first = frame.t if first is None else min(first, frame.t)
        last = frame.t if last is None else max(last, frame.t)
        n += 1
    asked = f"from {iso_utc(t0) if t0 is not None else 'the start'} to " \
            f"{iso_utc(t1) if t1 is not None else 'now'}"
    if first is None or last is None:
        return UsageError(
            "this twin holds no feature frames yet, so there is nothing to export",
            hint="ingest a recording (edgetwin ingest) or run the daemon with sensors first",
        )
    return UsageError(
        f"no feature frames {asked}",
        hint=f"this twin holds {n} frames from {iso_utc(first)} to {iso_utc(last)}; "
        "widen --from/--to",
    )


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[IO[bytes]]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb", buffering=1 << 20) as f:
        yield f


def _disk_error(path: Path, exc: OSError) -> HomeError:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"the disk is full while writing {path}",
                         hint="free some space, or export a narrower --from/--to")
    return HomeError(f"cannot write {path}: {exc.strerror or exc}")
