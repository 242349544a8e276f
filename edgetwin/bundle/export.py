"""Write a twin (or a slice of it) as one age-encrypted tar of open formats.

Members are first written to a private staging directory inside the twin
home (mode 0700, removed afterwards, also on failure), so that the manifest
(first in the archive) can carry every member's sha256. The archive is then
streamed through pyrage into ``FILE.part-*`` and renamed into place once
complete and audited. Memory stays flat: samples, frames and predictions are
read from the store one chunk at a time and written straight to their files.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from edgetwin.bundle import age
from edgetwin.bundle.formats import (
    CsvStreamWriter,
    SnirfWriter,
    StreamChanged,
    StreamPlan,
    fmt,
    json_meta,
    plan_stream,
    rate_hint,
    safe_stem,
    write_edf_stream,
)
from edgetwin.bundle.manifest import FORMAT, FORMAT_VERSION
from edgetwin.bundle.staging import EXPORT_PREFIX, Spool, remove_leftovers
from edgetwin.bundle.tarstream import BLOCK, MANIFEST, RECORD, IterReader, Member, tar_blocks
from edgetwin.errors import EdgetwinError, HomeError, StoreFull, UsageError

if TYPE_CHECKING:
    from edgetwin.store import TwinStore
    from edgetwin.types import Marker, SampleBatch

_LOGGER = logging.getLogger(__name__)

# Record kinds that travel with a twin (see the modules that own them):
# privacy.consent, privacy.accountant, sync.service (release, release_cursor),
# sync.outbox, sync.target, daemon pairing, inference baseline state.
RECORD_KINDS = (
    "consent",
    "privacy_ledger",
    "release",
    "release_cursor",
    "outbox",
    "sync",
    "pairing",
    "inference",
)
# Location records (the learned home and regular places) go only with --with-location.
LOCATION_RECORD_KINDS = ("place",)
# ("device", "signing_key") stays behind: a device's uplink identity must not travel
# to a clinician, and a new device enrolls its own key with the collector.
EXCLUDED_KINDS = ("device",)
PASSPHRASE_LIMIT = 256 * 1024 * 1024
CONFIG_FILE = "config.toml"

Progress = Callable[[str], None]


@dataclass
class ExportReport:
    """What an export wrote."""

    path: Path
    bundle_id: str
    mode: str
    bytes: int
    plaintext_bytes: int
    members: int
    streams: list[dict[str, Any]] = field(default_factory=list)
    frames: int = 0
    predictions: int = 0
    records: int = 0
    audit_entries: int = 0
    seconds: float = 0.0
    markers: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "markers": self.markers,
            "path": str(self.path),
            "bundle_id": self.bundle_id,
            "mode": self.mode,
            "bytes": self.bytes,
            "plaintext_bytes": self.plaintext_bytes,
            "members": self.members,
            "streams": self.streams,
            "frames": self.frames,
            "predictions": self.predictions,
            "records": self.records,
            "audit_entries": self.audit_entries,
            "seconds": round(self.seconds, 3),
        }


def export_bundle(
    store: TwinStore,
    out: Path,
    *,
    recipients: list[str] | None = None,
    passphrase: str | None = None,
    t0: float | None = None,
    t1: float | None = None,
    streams: list[str] | None = None,
    force: bool = False,
    passphrase_limit: int = PASSPHRASE_LIMIT,
    progress: Progress | None = None,
    with_location: bool = False,
) -> ExportReport:
    """Write ``store`` (samples in [t0, t1] of ``streams``, or all) to the age file ``out``.

    Exactly one of ``recipients`` (age public keys) or ``passphrase``. Without
    ``with_location`` the timeline's location features (``place``, ``home_distance``)
    are left out (empty cells; the manifest says so).
    """
    started = time.perf_counter()
    if (recipients is None) == (passphrase is None):
        raise UsageError("give either --recipient (one or more) or --passphrase")
    parsed = age.parse_recipients(recipients) if recipients is not None else None
    if passphrase is not None and not passphrase:
        raise UsageError("the bundle passphrase is empty")
    if t0 is not None and t1 is not None and t1 < t0:
        raise UsageError("--to is before --from")
    out = Path(out).absolute()
    if out.exists() and not force:
        raise UsageError(f"{out} already exists", hint="choose another name, or pass --force")
    if not out.parent.is_dir():
        raise UsageError(f"the directory of {out} does not exist")
    say = progress or (lambda _msg: None)
    mode = "recipients" if parsed is not None else "passphrase"
    bundle_id = secrets.token_hex(16)
    created = time.time()
    remove_leftovers(store.home)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f"{EXPORT_PREFIX}{os.getpid()}-", dir=store.home))
    except OSError as exc:
        raise HomeError(f"cannot make a staging directory in {store.home}: {exc.strerror}") from exc
    spool = Spool(staging)  # members in clear have no name on disk: a SIGKILL leaves none
    try:
        builder = _Builder(store, spool, t0, t1, say)
        builder.with_location = with_location
        builder.read_markers()
        builder.write_streams(streams)
        builder.write_timeline()
        builder.write_predictions()
        builder.write_markers()
        builder.write_records()
        builder.write_audit()
        builder.write_config()
        builder.write_readme()
        manifest = builder.manifest(bundle_id, created)
        man_path = spool.path(MANIFEST)
        man_path.write_text(json.dumps(manifest, indent=1, allow_nan=False), encoding="utf-8")
        members = [Member(MANIFEST, man_path, man_path.stat().st_size)]
        members += [Member(n, staging / n, m["size"]) for n, m in builder.members.items()]
        plain_len = _tar_size(members)
        part = out.with_name(f"{out.name}.part-{secrets.token_hex(4)}")
        say(f"encrypting {plain_len / 1e6:.1f} MB")
        try:
            with _exclusive(part) as f:
                if parsed is not None:
                    reader = IterReader(tar_blocks(members, created))
                    age.encrypt_stream(reader, f, parsed)
                    if reader.bytes_read != plain_len:
                        raise HomeError(f"the archive came out {reader.bytes_read} bytes, "
                                        f"not {plain_len}")
                else:
                    assert passphrase is not None
                    if plain_len > passphrase_limit:
                        raise UsageError(
                            f"this bundle holds {plain_len / 1e6:.0f} MB; passphrase bundles are "
                            f"encrypted in memory and limited to {passphrase_limit / 1e6:.0f} MB",
                            hint="use --recipient with an age-keygen key (streams at flat memory),"
                            " narrow it with --from/--to/--streams, or raise --passphrase-limit-mb",
                        )
                    blob = b"".join(tar_blocks(members, created))
                    f.write(age.encrypt_passphrase(blob, passphrase))
                    del blob
                f.flush()
                os.fsync(f.fileno())
            age.check_written(part, plain_len)
            size = part.stat().st_size
            store.audit(
                "export",
                bundle_id=bundle_id,
                file=str(out),
                mode=mode,
                recipients=[r.strip() for r in recipients] if recipients is not None else [],
                streams=[s["name"] for s in builder.stream_docs],
                t_from=t0,
                t_to=t1,
                bytes=size,
                members=len(members),
            )
            part.replace(out)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise
    except OSError as exc:
        raise _disk_error(out, exc) from exc
    finally:
        spool.release()
        shutil.rmtree(staging, ignore_errors=True)
    return ExportReport(
        path=out,
        bundle_id=bundle_id,
        mode=mode,
        bytes=size,
        plaintext_bytes=plain_len,
        members=len(members),
        streams=[{"name": s["name"], "format": s["format"], "samples": s["samples"],
                  "why": s["why"]} for s in builder.stream_docs],
        frames=builder.frames,
        predictions=builder.predictions,
        records=builder.records,
        audit_entries=builder.audit_entries,
        seconds=time.perf_counter() - started,
        markers=len(builder.markers),
    )


class _Builder:
    """Writes the members into the staging directory and remembers their digests."""

    def __init__(
        self, store: TwinStore, spool: Spool, t0: float | None, t1: float | None, say: Progress
    ) -> None:
        self.store = store
        self.spool = spool
        self.root = spool.root
        self.t0 = t0
        self.t1 = t1
        self.say = say
        self.members: dict[str, dict[str, Any]] = {}
        self.stream_docs: list[dict[str, Any]] = []
        self.timeline: dict[str, Any] | None = None
        self.predictions_doc: dict[str, Any] | None = None
        self.records_doc: dict[str, Any] = {}
        self.audit_doc: dict[str, Any] | None = None
        self.config_doc: dict[str, Any] | None = None
        self.models: set[str] = set()
        self.frames = 0
        self.predictions = 0
        self.records = 0
        self.audit_entries = 0
        self.first_t: float | None = None
        self.last_t: float | None = None
        self.markers: list[Marker] = []
        self.with_location = False  # the timeline's place and home_distance go too
        self.location_left_out: list[str] = []  # location streams not exported
        self.markers_doc: dict[str, Any] | None = None

    # -- members ------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.spool.path(name)

    def done(self, name: str) -> None:
        p = self.root / name
        h = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        self.members[name] = {"size": p.stat().st_size, "sha256": h.hexdigest()}

    def _span(self, first: float | None, last: float | None) -> None:
        if first is not None:
            self.first_t = first if self.first_t is None else min(self.first_t, first)
        if last is not None:
            self.last_t = last if self.last_t is None else max(self.last_t, last)

    # -- streams ------------------------------------------------------------------------

    def write_streams(self, only: list[str] | None) -> None:
        from edgetwin.features.schema import surroundings_of

        infos = self.store.streams()
        by_name = {s.name: s for s in infos}
        if only is not None:
            unknown = [s for s in only if s not in by_name]
            if unknown:
                raise UsageError(
                    f"no stream named {', '.join(map(repr, unknown))} in this twin",
                    hint=f"streams: {', '.join(by_name) or 'none'}",
                )
            infos = [by_name[s] for s in dict.fromkeys(only)]
            asked = [s for s in only if _is_location_stream(by_name[s])]
            if asked and not self.with_location:
                raise UsageError(f"{', '.join(map(repr, asked))} holds where you were: location "
                                 "leaves the device only when asked",
                                 hint="add --with-location to export it")
        if not self.with_location:  # where the person was stays on the device unless asked
            self.location_left_out = [i.name for i in infos if _is_location_stream(i)]
            infos = [i for i in infos if not _is_location_stream(i)]
        stems: set[str] = set()
        for index, info in enumerate(infos):
            stem = safe_stem(info.name, index)
            if stem.lower() in stems:
                stem = f"stream-{index}"
            stems.add(stem.lower())
            self.say(f"scanning {info.name}")
            plan = plan_stream(info.name, stem, self._samples(info.name), rate_hint(info.meta))
            if plan.samples == 0:
                continue
            if surroundings_of(info.name) is not None and plan.format == "edf":
                # slow room/air readings: CSV keeps each one's time and value exactly
                plan.format, plan.reason = "csv", "room climate, air quality or location readings"
            self.say(f"writing {info.name} as {plan.format.upper()}")
            doc = self._write_stream(plan)
            self._span(plan.first_t, plan.last_t)
            self.stream_docs.append(doc)

    def _samples(self, name: str) -> Iterator[Any]:
        return self.store.read_samples(name, self.t0, self.t1)

    def _write_stream(self, plan: StreamPlan) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": plan.name,
            "format": plan.format,
            "why": plan.reason,
            "channels": list(plan.channels),
            "units": list(plan.units),
            "samples": plan.samples,
            "first_t": plan.first_t,
            "last_t": plan.last_t,
            "meta": json_meta(plan.meta),
        }
        from edgetwin.features.schema import surroundings_of

        what = surroundings_of(plan.name)
        if what is not None:
            doc["surroundings"] = what
        try:
            if plan.format == "edf":
                # markers become EDF+ annotations of the recordings they fall in
                doc.update(write_edf_stream(plan, self._planned(plan), self.path, self.done,
                                            markers=[(m.t, m.text) for m in self.markers]))
            elif plan.format == "snirf":
                name = f"signals/{plan.stem}.snirf"
                w = SnirfWriter(self.path(name), plan,
                                markers=[(m.t, m.text) for m in self.markers])
                try:
                    for b in self._planned(plan):
                        w.add(b.t, b.values)
                finally:
                    w.close()
                _same_count(plan, w.samples)
                self.done(name)
                doc.update({"member": name, "t_ref": w.t_ref})
            else:
                name = f"signals/{plan.stem}.csv"
                cw = CsvStreamWriter(self.path(name), plan.channels)
                try:
                    for b in self._planned(plan):
                        if not set(b.channels) <= set(plan.channels):
                            raise StreamChanged("a channel layout it did not have")
                        cw.add(b)
                finally:
                    cw.close()
                _same_count(plan, cw.samples)
                self.done(name)
                doc["member"] = name
        except StreamChanged as exc:
            raise UsageError(
                f"stream {plan.name!r} changed while it was exported ({exc}); export again"
            ) from exc
        return doc

    def _planned(self, plan: StreamPlan) -> Iterator[SampleBatch]:
        """The samples the plan scanned: up to its last time, so that what a running daemon
        commits meanwhile stays out of this bundle (it goes into the next)."""
        last = plan.last_t
        t1 = last if self.t1 is None or last is None else min(self.t1, last)
        return self.store.read_samples(plan.name, self.t0, t1)

    # -- timeline, predictions, records, audit, config ---------------------------------------

    def write_timeline(self) -> None:
        from edgetwin.features.schema import FEATURES, LOCATION, NAMES, SCHEMA_VERSION

        withheld = () if self.with_location else LOCATION
        hide = [NAMES.index(n) for n in withheld]
        name = "timeline.csv"
        skipped = 0
        first = last = None
        with self.path(name).open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["timestamp", *NAMES, *(f"{n}_quality" for n in NAMES), "imputed",
                        "schema_version"])
            for frame in self.store.read_frames(self.t0, self.t1):
                if frame.values.shape[0] != len(NAMES):
                    skipped += 1
                    continue
                values, quality = frame.values, frame.quality
                if hide:  # where the person was stays on the device unless asked for
                    values, quality = values.copy(), quality.copy()
                    values[hide], quality[hide] = np.nan, 0.0
                imputed = ";".join(n for i, n in enumerate(NAMES)
                                   if frame.imputed[i] and n not in withheld)
                w.writerow([
                    fmt(frame.t),
                    *(fmt(v) for v in values),
                    *(fmt(q) for q in quality),
                    imputed,
                    frame.schema_version,
                ])
                first = frame.t if first is None else first
                last = frame.t
                self.frames += 1
        if skipped:
            _LOGGER.warning("skipped %d frames of another feature schema", skipped)
        self.done(name)
        self._span(first, last)
        self.timeline = {
            "member": name,
            "frames": self.frames,
            "schema_version": SCHEMA_VERSION,
            "features": list(NAMES),
            "units": [f.unit for f in FEATURES],
            "skipped_other_schema": skipped,
            "withheld": list(withheld),  # empty columns: location without --with-location
        }

    def write_predictions(self) -> None:
        name = "predictions.jsonl"
        with self.path(name).open("w", encoding="utf-8") as f:
            for p in self.store.iter_predictions(self.t0, self.t1):
                f.write(json.dumps(p.to_json(), separators=(",", ":")) + "\n")
                self.models.add(p.model)
                self.predictions += 1
        self.done(name)
        self.predictions_doc = {"member": name, "format": "jsonl", "count": self.predictions}

    def read_markers(self) -> None:
        """The markers in range, read once: the EDF files annotate them, markers.csv lists them."""
        self.markers = self.store.read_markers(self.t0, self.t1)

    def write_markers(self) -> None:
        name = "markers.csv"
        with self.path(name).open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["timestamp", "text", "source"])
            for m in self.markers:
                w.writerow([fmt(m.t), m.text, m.source])
        self.done(name)
        if self.markers:
            self._span(self.markers[0].t, self.markers[-1].t)
        self.markers_doc = {"member": name, "count": len(self.markers),
                            "columns": ["timestamp", "text", "source"]}

    def write_records(self) -> None:
        # the learned places (gpsd sources' place memory) travel only with the location
        for kind in (*RECORD_KINDS, *(LOCATION_RECORD_KINDS if self.with_location else ())):
            recs = self.store.list_records(kind)
            if not recs:
                continue
            name = f"records/{kind}.json"
            self.path(name).write_text(
                json.dumps({"kind": kind, "records": recs}, indent=1, default=_jsonable),
                encoding="utf-8",
            )
            self.done(name)
            self.records_doc[kind] = {"member": name, "count": len(recs)}
            self.records += len(recs)

    def write_audit(self) -> None:
        name = "audit.jsonl"
        entries = self.store.audit_entries()
        with self.path(name).open("w", encoding="utf-8") as f:
            for e in entries:
                f.write(json.dumps(e, separators=(",", ":"), default=_jsonable) + "\n")
        self.audit_entries = len(entries)
        self.done(name)
        self.audit_doc = {
            "member": name, "entries": len(entries), "source_twin": self.store.twin_id,
        }

    def write_config(self) -> None:
        src = self.store.home / CONFIG_FILE
        if not src.is_file():
            return
        shutil.copyfile(src, self.path(CONFIG_FILE))
        self.done(CONFIG_FILE)
        self.config_doc = {"member": CONFIG_FILE}

    def write_readme(self) -> None:
        lines = [
            "edgetwin twin bundle",
            "====================",
            "",
            "manifest.json      what is here: streams, channels, units, time ranges, models,",
            "                   and the sha256 of every other file",
            "timeline.csv       feature frames: timestamp (Unix epoch s), one column per feature,",
            "                   <feature>_quality (0..1), imputed (features filled by the imputer)",
            "markers.csv        events: timestamp (Unix epoch s), text, source (cli, xdf:<stream>,",
            "                   lsl:<name>, ...); also EDF+ annotations and SNIRF stim",
            "predictions.jsonl  one forecast per line (t, target, step_s, horizon, band,",
            "                   attention, imputed, model, anomaly)",
            "signals/*.edf      regularly sampled biosignals, EDF+C, one file per recording",
            "                   (start: a whole second, UTC; digital -32768 marks no sample,",
            "                   spans with none annotated BAD_ACQ_SKIP)",
            "signals/*.times.npy  the exact Unix time of each EDF sample (NaN: no sample)",
            "signals/*.snirf    fNIRS raw intensities, SNIRF 1.1 (HDF5); markers as stim",
            "signals/*.csv      irregular streams (RR, heart rate, ...) and the surroundings (room",
            "                   climate, air quality): timestamp, then channels",
            "records/*.json     consent, privacy-budget ledger, releases, outbox, pairings, ...",
            "audit.jsonl        the twin's audit log, oldest first",
            "config.toml        the twin's behaviour settings",
            "",
            "Streams in this bundle:",
        ]
        for s in self.stream_docs:
            lines.append(f"  {s['name']}: {s['format'].upper()} ({s['why']}), "
                         f"{s['samples']} samples, {len(s['channels'])} channels")
        name = "README.txt"
        self.path(name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.done(name)

    # -- manifest ------------------------------------------------------------------------

    def manifest(self, bundle_id: str, created: float) -> dict[str, Any]:
        from edgetwin import __version__

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bundle_id": bundle_id,
            "twin_id": self.store.twin_id,
            "created": created,
            "created_iso": dt.datetime.fromtimestamp(created, tz=dt.UTC).isoformat(),
            "edgetwin_version": __version__,
            "range": {
                "from": self.t0,
                "to": self.t1,
                "first_t": self.first_t,
                "last_t": self.last_t,
            },
            "streams": self.stream_docs,
            "timeline": self.timeline,
            "predictions": self.predictions_doc,
            "markers": self.markers_doc,
            "models": _models(self.models),
            "records": self.records_doc,
            "records_left_out": list(EXCLUDED_KINDS) + (
                [] if self.with_location else list(LOCATION_RECORD_KINDS)),
            # location leaves the device only with --with-location: what stayed behind
            "location": {
                "included": self.with_location,
                "streams_left_out": self.location_left_out,
                "records_left_out": [] if self.with_location else list(LOCATION_RECORD_KINDS),
                "features_left_out": list((self.timeline or {}).get("withheld", [])),
            },
            "audit": self.audit_doc,
            "config": self.config_doc,
            "members": self.members,
        }


def _is_location_stream(info: Any) -> bool:
    """A stream that says where the person was: a gpsd source's ``<name>.location``, or any
    stream with both lat and lon channels."""
    return str(info.name).endswith(".location") or {"lat", "lon"} <= set(info.channels)


def _models(used: set[str]) -> list[dict[str, Any]]:
    """Each model id the predictions name, with its files' sha256 when the manifest is here."""
    files: list[dict[str, Any]] = []
    try:
        from edgetwin.inference.registry import load_manifest

        m = load_manifest()
        files = [
            {"model": f.name, "precision": f.precision, "file": f.path.name,
             "sha256": f.sha256, "bytes": f.size}
            for f in m.files.values()
        ]
    except (EdgetwinError, ImportError) as exc:
        _LOGGER.info("no model manifest to describe the models: %s", exc)
    out = []
    for model_id in sorted(used):
        prefix = model_id.rsplit("/", 1)[-1]
        precision = model_id.split("/")[1] if model_id.count("/") >= 2 else None
        match = [f for f in files if f["precision"] == precision] if precision else []
        if not any(f["model"] == "forecaster" and f["sha256"].startswith(prefix) for f in match):
            match = []
        out.append({"id": model_id, "files": match})
    return out


def _same_count(plan: StreamPlan, written: int) -> None:
    if written != plan.samples:
        raise StreamChanged(f"{written} samples written, {plan.samples} planned")


def _tar_size(members: list[Member]) -> int:
    total = sum(BLOCK + m.size + (-m.size % BLOCK) for m in members) + 2 * BLOCK
    return total + (-total % RECORD)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[IO[bytes]]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb", buffering=1 << 20) as f:
        yield f


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def _disk_error(path: Path, exc: OSError) -> HomeError:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(
            f"the disk is full while writing {path}",
            hint="free some space (the bundle needs about the size of the exported data twice)",
        )
    return HomeError(f"cannot write {path}: {exc.strerror or exc}")
