"""Turn a bundle back into a working twin: verify everything first, then restore atomically.

1. Decrypt (pyrage) straight into a strict tar parser that writes the members
   into a staging directory next to the target home; each member must be
   declared by the manifest with its exact size and sha256.
2. Re-ingest every member into a new twin built in that staging directory
   (new local keys), so a member that decodes badly stops the import there.
3. Into an empty home: rename the staging twin into place (one atomic
   ``rename``). With ``--merge`` into an existing twin: copy from the staging
   twin, skipping what the target already holds (samples per stream within
   half a sample period, frames and predictions by time, records by key).

Nothing is written outside the staging directory and the target, and the
staging directory is removed whatever happens.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetwin.bundle import age
from edgetwin.bundle.checks import (
    AUDIT_SPEC,
    PREDICTION_SPEC,
    check_fields,
    check_records,
    load_json,
)
from edgetwin.bundle.export import (
    CONFIG_FILE,
    PASSPHRASE_LIMIT,
    RECORD_KINDS,
)
from edgetwin.bundle.formats import read_csv, read_edf_stream, read_snirf
from edgetwin.bundle.manifest import validate
from edgetwin.bundle.staging import Spool, remove_leftovers
from edgetwin.bundle.tarstream import TarSink
from edgetwin.errors import ConfigError, DataCorrupt, HomeError, UsageError
from edgetwin.types import FeatureFrame, FloatArray, Marker, Prediction, SampleBatch

if TYPE_CHECKING:
    from edgetwin.store import KdfParams, Secret, TwinStore

_LOGGER = logging.getLogger(__name__)

IMPORTED_AUDIT = "imported_audit"  # ("imported_audit", "<source twin>:<seq>") -> the entry
BUNDLE_IMPORT = "bundle_import"  # ("bundle_import", bundle id) -> when and what was merged
_COMMIT_ROWS = 65_536  # rows buffered before a commit: bounds import memory
_GROUP = 4096
_EXACT_TOL = 1e-6
_T_MAX = 1e11  # year 5138: the latest time ``ingest --allow-future`` takes (EPOCH_MAX)

Progress = Callable[[str], None]


@dataclass
class ImportReport:
    """What an import restored."""

    home: Path
    twin_id: str
    bundle_id: str
    source_twin: str
    merged: bool
    samples: int = 0
    frames: int = 0
    predictions: int = 0
    records: int = 0
    audit_entries: int = 0
    markers: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    streams: list[str] = field(default_factory=list)
    config: str = "none"
    settings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "home": str(self.home),
            "twin_id": self.twin_id,
            "bundle_id": self.bundle_id,
            "source_twin": self.source_twin,
            "merged": self.merged,
            "samples": self.samples,
            "frames": self.frames,
            "predictions": self.predictions,
            "records": self.records,
            "audit_entries": self.audit_entries,
            "markers": self.markers,
            "duplicates_skipped": self.skipped,
            "streams": self.streams,
            "config": self.config,
            "settings": self.settings,
            "seconds": round(self.seconds, 3),
        }


def home_state(home: Path) -> str:
    """``absent``, ``empty``, ``twin`` (a twin lives there) or ``other`` (files, no twin)."""
    if not home.exists():
        return "absent"
    if not home.is_dir():
        return "other"
    if (home / "twin.db").exists() or (home / "keystore.json").exists():
        return "twin"
    return "other" if any(home.iterdir()) else "empty"


def unpack_bundle(
    path: Path,
    dest: Path,
    *,
    identities: list[Any] | None = None,
    passphrase: str | None = None,
    passphrase_limit: int = PASSPHRASE_LIMIT,
    spool: Spool | None = None,
) -> dict[str, Any]:
    """Decrypt and unpack ``path`` into the empty directory ``dest``; the verified manifest.

    With a ``spool`` the members have no name on disk and live until it is released.
    """
    if not path.is_file():
        raise UsageError(f"bundle {path} does not exist")
    sink = TarSink(dest, validate, spool)
    try:
        if identities is not None:
            age.decrypt_stream(path, sink, identities)
        else:
            assert passphrase is not None
            blob = age.decrypt_passphrase(path, passphrase, passphrase_limit)
            view = memoryview(blob)
            for i in range(0, len(view), 1 << 20):
                sink.write(view[i : i + (1 << 20)])
            del view, blob
    finally:
        sink.close()
    sink.finish()
    assert sink.manifest is not None
    return sink.manifest


def import_bundle(
    path: Path,
    home: Path,
    *,
    identities: list[Any] | None = None,
    passphrase: str | None = None,
    secret: Secret | None = None,
    target: TwinStore | None = None,
    kdf: KdfParams | None = None,
    passphrase_limit: int = PASSPHRASE_LIMIT,
    progress: Progress | None = None,
    accept_settings: bool = False,
) -> ImportReport:
    """Restore the bundle at ``path`` as a new twin in the empty ``home`` (with ``secret``),
    or merge it into the open twin ``target``.

    A merge that would change the target's settings (grant consent, set the
    sync target, pair devices, queue uploads) is refused before anything is written unless
    ``accept_settings``: a bundle must not silently redirect the person's DP
    uploads or consent on their behalf.
    """
    from edgetwin.store import KdfParams, Secret, TwinStore

    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    if (identities is None) == (passphrase is None):
        raise UsageError("give either --identity FILE or --passphrase")
    if (secret is None) == (target is None):
        raise UsageError("import needs either a new twin's secret or a twin to merge into")
    home = Path(home).absolute()
    if target is None:
        state = home_state(home)
        if state in ("twin", "other"):
            raise HomeError(
                f"{home} is not empty" + (" (a twin lives there)" if state == "twin" else ""),
                hint="import into an empty --home, or pass --merge to add the bundle to that twin",
            )
    parent = home.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(home)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{home.name}.import-{os.getpid()}-", dir=parent)
        )
    except OSError as exc:
        raise HomeError(f"cannot make a staging directory in {parent}: {exc.strerror}") from exc
    members = staging / "members"
    spool = Spool(members)  # plaintext members have no name: a SIGKILL leaves none behind
    try:
        members.mkdir(mode=0o700)
        say("decrypting and verifying")
        manifest = unpack_bundle(
            path, members, identities=identities, passphrase=passphrase,
            passphrase_limit=passphrase_limit, spool=spool,
        )
        bundle_id = str(manifest["bundle_id"])
        source = str(manifest["twin_id"])
        settings = setting_changes(read_all_records(members, manifest), target)
        if target is not None and settings and not accept_settings:
            raise UsageError(
                f"the bundle would change this twin's settings: {'; '.join(settings)}; "
                "nothing was merged",
                hint="pass --accept-settings to merge it with these settings",
            )
        twin_home = staging / "twin"
        if target is None:
            assert secret is not None
            store = TwinStore.create(twin_home, secret, kdf=kdf)
        else:
            ephemeral = Secret.passphrase(secrets.token_urlsafe(32))
            # a random 256-bit secret needs no stretching; this twin is deleted below
            store = TwinStore.create(twin_home, ephemeral, kdf=KdfParams.for_tests())
        report = ImportReport(home, store.twin_id, bundle_id, source, target is not None)
        report.settings = settings
        with store:
            say("restoring")
            with _reading("the bundle's contents"):
                _ingest(store, members, manifest, report)
            if target is None:
                report.config = _restore_config(members, manifest, twin_home)
                store.audit("import", **_audit_details(path, report))
            else:
                say("merging")
                report.twin_id = target.twin_id
                _merge(store, target, manifest, report)
                target.audit("import", **_audit_details(path, report))
        if target is None:
            _publish(twin_home, home)
    except OSError as exc:
        raise HomeError(f"import failed on {staging}: {exc.strerror or exc}") from exc
    finally:
        spool.release()
        shutil.rmtree(staging, ignore_errors=True)
    report.seconds = time.perf_counter() - started
    return report


# ======================================================================================
# restoring into a fresh twin
# ======================================================================================


def _ingest(store: TwinStore, root: Path, manifest: dict[str, Any], report: ImportReport) -> None:
    pending = 0

    def flush(n: int, *, force: bool = False) -> None:
        nonlocal pending
        pending += n
        if force or pending >= _COMMIT_ROWS:
            store.commit()
            pending = 0

    for doc in manifest["streams"]:
        what = f"bundle stream {str(doc['name'])[:60]!r} ({_members_of(doc)})"
        with _reading(what):
            for b in stream_batches(root, doc):
                _check_times(b.t, what)
                store.append_samples(b)
                report.samples += len(b)
                flush(len(b))
        report.streams.append(str(doc["name"]))
    flush(0, force=True)
    if manifest.get("timeline"):
        with _reading(f"bundle member {manifest['timeline']['member']!r}"):
            for frames in _chunks(_read_timeline(root, manifest["timeline"]), _GROUP):
                _check_times(np.array([f.t for f in frames]), "timeline.csv")
                store.append_frames(frames)
                report.frames += len(frames)
                flush(len(frames))
    if manifest.get("predictions"):
        with _reading(f"bundle member {manifest['predictions']['member']!r}"):
            for preds in _chunks(_read_predictions(root, manifest["predictions"]), _GROUP):
                _check_times(np.array([p.t for p in preds]), "predictions.jsonl")
                store.append_predictions(preds)
                report.predictions += len(preds)
                flush(len(preds))
    if manifest.get("markers"):
        with _reading(f"bundle member {manifest['markers']['member']!r}"):
            for marks in _chunks(_read_markers(root, manifest["markers"]), _GROUP):
                _check_times(np.array([m.t for m in marks]), "markers.csv")
                store.append_markers(marks)
                report.markers += len(marks)
                flush(len(marks))
    flush(0, force=True)
    for kind, recs in read_all_records(root, manifest).items():
        with store.transaction():
            for key, value in recs.items():
                store.put_record(kind, key, value)
        report.records += len(recs)
    if manifest.get("audit"):
        source = str(manifest["twin_id"])
        member = str(manifest["audit"]["member"])
        with _reading(f"bundle member {member!r}"), store.transaction():
            for entry in _read_audit(root, member):
                store.put_record(IMPORTED_AUDIT, f"{source}:{entry['seq']:08d}", entry)
                report.audit_entries += 1


def _check_times(t: FloatArray, what: str) -> None:
    """Times the store can key: finite and within ±year 5138, as far as ``ingest`` goes."""
    if t.size and not (np.isfinite(t).all() and float(np.abs(t).max()) <= _T_MAX):
        bad = t[~(np.isfinite(t) & (np.abs(t) <= _T_MAX))][0]
        raise DataCorrupt(
            f"{what}: the time {float(bad):.6g} is not a Unix time edgetwin keeps "
            "(finite, before the year 5138)",
            hint="the bundle was not written by edgetwin or was altered; nothing was imported",
        )


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    """Whatever a member makes a reader or the store choke on is that member's fault: exit 4.

    The readers check what they know (with the line); this is the backstop that
    keeps a hostile member from ever surfacing as a Python exception.
    """
    try:
        yield
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            RecursionError, UnicodeDecodeError, csv.Error) as exc:
        raise DataCorrupt(
            f"{what} cannot be read: {type(exc).__name__}: {str(exc)[:160]}",
            hint="the bundle was not written by edgetwin or was altered before encryption; "
            "nothing was imported",
        ) from exc


def _members_of(doc: dict[str, Any]) -> str:
    if "member" in doc:
        return str(doc["member"])
    segs = doc.get("segments") or doc.get("recordings") or []
    names = [str(s.get("member")) for s in segs if isinstance(s, dict)]
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def setting_changes(
    records: dict[str, dict[str, dict[str, Any]]], target: TwinStore | None
) -> list[str]:
    """What the bundle's records would set in ``target`` (a new twin: ``None``), in words.

    Only what a merge adds counts: a record the target already holds is kept as it is.
    """

    def new(kind: str, key: str) -> bool:
        return target is None or target.get_record(kind, key) is None

    out: list[str] = []
    for metric, rec in sorted(records.get("consent", {}).items()):
        if rec["granted"] and new("consent", metric):
            period = f" per {rec['period']}" if isinstance(rec.get("period"), str) else ""
            out.append(f"grant consent to share {metric[:60]!r}{period}")
    sync = records.get("sync", {}).get("target")
    if sync is not None and new("sync", "target"):
        where = str(sync["url"])[:120]
        if isinstance(sync.get("topic"), str):
            where += f" topic {sync['topic'][:60]}"
        out.append(f"set the sync target (where DP releases are uploaded) to {where}")
    paired = sorted(k for k in records.get("pairing", {}) if new("pairing", k))
    if paired:
        # the daemon would start recording from these devices
        out.append("pair the device(s) " + ", ".join(repr(k[:40]) for k in paired[:5])
                   + (f" and {len(paired) - 5} more" if len(paired) > 5 else ""))
    queued = [k for k, r in records.get("outbox", {}).items()
              if r["state"] in ("pending", "failed") and new("outbox", k)]
    if queued:
        out.append(f"queue {len(queued)} DP release(s) of the bundle's twin for upload")
    return out


def read_all_records(root: Path, manifest: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Every record member of the bundle, each checked against its kind's shape."""
    return {
        kind: _read_records(root, str(entry["member"]), kind)
        for kind, entry in sorted(manifest["records"].items())
    }


def stream_batches(root: Path, doc: dict[str, Any]) -> Iterator[SampleBatch]:
    """The samples of one manifest stream entry, batch by batch."""
    name = str(doc["name"])
    channels = tuple(str(c) for c in doc["channels"])
    units = tuple(str(u) for u in doc["units"])
    meta = dict(doc["meta"])
    fmt = doc["format"]
    count = 0
    if fmt == "edf":
        for b in read_edf_stream(root, doc, name, channels, units, meta):
            count += len(b)
            yield b
    elif fmt == "snirf":
        for b in read_snirf(root / doc["member"], name, channels, units, float(doc["t_ref"]),
                            int(doc["samples"]), meta):
            count += len(b)
            yield b
    else:
        for b in read_csv(root / doc["member"], name, channels, units, meta):
            count += len(b)
            yield b
    if count != int(doc["samples"]):
        raise DataCorrupt(
            f"stream {name!r}: the bundle holds {count} samples; its manifest says {doc['samples']}"
        )


def _read_timeline(root: Path, doc: dict[str, Any]) -> Iterator[FeatureFrame]:
    from edgetwin.features.schema import LAYOUTS, upgrade_frame

    path = root / str(doc["member"])
    features = doc.get("features")
    # a bundle of an older feature schema (v1) reads as the current one (upgrade_frame)
    layout = next((names for names in LAYOUTS.values()
                   if isinstance(features, list) and tuple(features) == names), None)
    if layout is None:
        raise DataCorrupt(
            f"{path.name}: the bundle's features are of schema v{doc.get('schema_version')}, "
            "not one this edgetwin reads",
            hint="import it with the edgetwin version that exported it",
        )
    want = ["timestamp", *layout, *(f"{n}_quality" for n in layout), "imputed", "schema_version"]
    n = len(layout)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise DataCorrupt(f"{path.name}, line 1: not CSV ({exc})") from None
        if header != want:
            raise DataCorrupt(f"{path.name}: its header is not the timeline's")
        for line_no, row in _csv_rows(reader, path.name):
            if len(row) != len(want):
                raise DataCorrupt(f"{path.name}, line {line_no}: {len(row)} cells")
            try:
                t = float(row[0])
                values = np.array([float(c) if c else math.nan for c in row[1 : 1 + n]])
                quality = np.array([float(c) if c else math.nan for c in row[1 + n : 1 + 2 * n]])
                version = int(row[-1])
            except ValueError as exc:
                raise DataCorrupt(f"{path.name}, line {line_no}: {exc}") from exc
            names = set(row[-2].split(";")) - {""}
            if not names <= set(layout):
                raise DataCorrupt(f"{path.name}, line {line_no}: unknown imputed feature")
            if not math.isfinite(t):
                raise DataCorrupt(f"{path.name}, line {line_no}: a non-finite time")
            imputed = np.array([nm in names for nm in layout], dtype=bool)
            try:
                yield upgrade_frame(FeatureFrame(t, values, quality, imputed, version))
            except ValueError as exc:
                raise DataCorrupt(f"{path.name}, line {line_no}: {exc}") from exc


def _csv_rows(reader: Any, name: str) -> Iterator[tuple[int, list[str]]]:
    """Rows with their line numbers; a CSV error (a NUL, a huge cell) names its line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataCorrupt(f"{name}, line {reader.line_num}: not CSV ({exc})") from None
        yield reader.line_num, row


def _read_markers(root: Path, doc: dict[str, Any]) -> Iterator[Marker]:
    """The rows of markers.csv, each checked as ``edgetwin mark`` checks its text."""
    path = root / str(doc["member"])
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise DataCorrupt(f"{path.name}, line 1: not CSV ({exc})") from None
        if header != ["timestamp", "text", "source"]:
            raise DataCorrupt(f"{path.name}: its header is not 'timestamp,text,source'")
        for line_no, row in _csv_rows(reader, path.name):
            if len(row) != 3:
                raise DataCorrupt(f"{path.name}, line {line_no}: {len(row)} cells, not 3")
            try:
                marker = Marker(float(row[0]), row[1], row[2])
            except ValueError as exc:
                raise DataCorrupt(f"{path.name}, line {line_no}: {exc}") from exc
            problem = marker.problem()
            if problem is not None:
                raise DataCorrupt(f"{path.name}, line {line_no}: {problem}")
            yield marker


def _read_predictions(root: Path, doc: dict[str, Any]) -> Iterator[Prediction]:
    path = root / str(doc["member"])
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            where = f"{path.name}, line {line_no}"
            obj = check_fields(load_json(line, where), PREDICTION_SPEC, where)
            try:
                p = Prediction.from_json(obj)
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                raise DataCorrupt(f"{where}: not a prediction ({exc})") from exc
            yield p


def _read_records(root: Path, member: str, kind: str) -> dict[str, dict[str, Any]]:
    return check_records(load_json((root / member).read_bytes(), member), kind, member)


def _read_audit(root: Path, member: str) -> Iterator[dict[str, Any]]:
    with (root / member).open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            where = f"{member}, line {line_no}"
            yield check_fields(load_json(line, where), AUDIT_SPEC, where)


def _restore_config(root: Path, manifest: dict[str, Any], twin_home: Path) -> str:
    from edgetwin.config import default_config_text, load_config
    from edgetwin.store.keys import atomic_replace

    dest = twin_home / CONFIG_FILE
    if manifest.get("config"):
        shutil.copyfile(root / str(manifest["config"]["member"]), dest)
        dest.chmod(0o600)
        try:
            load_config(twin_home)
        except (ConfigError, ValueError, RecursionError) as exc:  # hostile TOML included
            _LOGGER.warning("the bundle's config.toml is not valid here (%s); using defaults", exc)
        else:
            return "from bundle"
    atomic_replace(dest, default_config_text().encode("utf-8"))
    return "default"


def _publish(twin_home: Path, home: Path) -> None:
    """Move the finished twin into place: one rename (over an empty directory if there is one)."""
    try:
        twin_home.rename(home)
    except OSError as exc:
        raise HomeError(
            f"cannot move the imported twin into {home}: {exc.strerror}",
            hint="the target must be absent or an empty directory; nothing was imported",
        ) from exc
    home.chmod(0o700)
    fd = os.open(home.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _audit_details(path: Path, report: ImportReport) -> dict[str, Any]:
    return {
        "bundle_id": report.bundle_id,
        "file": str(path.absolute()),
        "source_twin": report.source_twin,
        "merge": report.merged,
        "samples": report.samples,
        "frames": report.frames,
        "predictions": report.predictions,
        "records": report.records,
        "duplicates_skipped": dict(report.skipped),
    }


# ======================================================================================
# merging into an existing twin
# ======================================================================================


def _merge(
    src: TwinStore, dst: TwinStore, manifest: dict[str, Any], report: ImportReport
) -> None:
    counts = {"samples": 0, "frames": 0, "predictions": 0, "records": 0}
    skipped = {"samples": 0, "frames": 0, "predictions": 0, "records": 0}
    tolerance = {
        str(s["name"]): (0.5 / float(s["rate_hz"]) if s["format"] == "edf" else _EXACT_TOL)
        for s in manifest["streams"]
    }
    existing = {s.name: s for s in dst.streams()}
    pending = 0
    for name, tol in tolerance.items():
        info = existing.get(name)
        for b in src.read_samples(name):
            keep = np.ones(len(b), dtype=bool)
            if (info is not None and info.first_t is not None and info.last_t is not None
                    and b.last_t >= info.first_t - tol and b.first_t <= info.last_t + tol):
                have = [d.t for d in dst.read_samples(name, b.first_t - tol, b.last_t + tol)]
                if have:
                    keep = ~_near(b.t, np.sort(np.concatenate(have)), tol)
            n = int(keep.sum())
            skipped["samples"] += len(b) - n
            if n:
                batch = b if n == len(b) else SampleBatch(
                    b.stream, b.channels, b.units, b.t[keep], b.values[keep], b.meta
                )
                dst.append_samples(batch)
                counts["samples"] += n
                pending += n
            if pending >= _COMMIT_ROWS:
                dst.commit()
                pending = 0
    dst.commit()
    for group in _chunks(src.read_frames(), _GROUP):
        t = np.array([f.t for f in group])
        have_t = np.array([f.t for f in dst.read_frames(float(t.min()) - _EXACT_TOL,
                                                        float(t.max()) + _EXACT_TOL)])
        keep = ~_near(t, np.sort(have_t), _EXACT_TOL) if have_t.size else np.ones(len(t), bool)
        frames = [f for f, k in zip(group, keep, strict=True) if k]
        dst.append_frames(frames)
        counts["frames"] += len(frames)
        skipped["frames"] += len(group) - len(frames)
        dst.commit()
    for preds in _chunks(src.iter_predictions(), _GROUP):
        lo, hi = min(p.t for p in preds), max(p.t for p in preds)
        known = {_pkey(p) for p in dst.iter_predictions(lo - _EXACT_TOL, hi + _EXACT_TOL)}
        new = [p for p in preds if _pkey(p) not in known]
        dst.append_predictions(new)
        counts["predictions"] += len(new)
        skipped["predictions"] += len(preds) - len(new)
        dst.commit()
    counts["markers"] = skipped["markers"] = 0
    for marks in _chunks(iter(src.read_markers()), _GROUP):
        have_marks = set(dst.read_markers(marks[0].t, marks[-1].t))
        new_marks = [m for m in marks if m not in have_marks]
        dst.append_markers(new_marks)
        dst.commit()
        counts["markers"] += len(new_marks)
        skipped["markers"] += len(marks) - len(new_marks)
    bundle_id = str(manifest["bundle_id"])
    with dst.transaction():
        # the ledger of a bundle merged before, or of this very twin, is already counted
        again = (dst.get_record(BUNDLE_IMPORT, bundle_id) is not None
                 or str(manifest["twin_id"]) == dst.twin_id)
        for kind in (*RECORD_KINDS, IMPORTED_AUDIT):
            theirs = src.list_records(kind)
            if not theirs:
                continue
            ours = dst.list_records(kind)
            for key, value in theirs.items():
                if key not in ours:
                    dst.put_record(kind, key, value)
                    counts["records"] += 1
                elif kind == "privacy_ledger" and not again:
                    # both twins spent budget on this period: the person's total is the sum
                    dst.put_record(kind, key, _add_spent(ours[key], value))
                    counts["records"] += 1
                else:
                    skipped["records"] += 1
        dst.put_record(BUNDLE_IMPORT, bundle_id, {
            "at": time.time(), "source_twin": str(manifest["twin_id"]), "counts": counts,
        })
    report.samples = counts["samples"]
    report.frames = counts["frames"]
    report.predictions = counts["predictions"]
    report.records = counts["records"]
    report.markers = counts["markers"]
    report.skipped = skipped


def _add_spent(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    out = dict(ours)
    try:
        out["spent"] = float(ours.get("spent", 0.0)) + float(theirs.get("spent", 0.0))
    except (TypeError, ValueError) as exc:
        raise DataCorrupt("a privacy-ledger record of the bundle has no numeric 'spent'") from exc
    return out


def _pkey(p: Prediction) -> tuple[str, str, int]:
    return (p.target, p.model, round(p.t / _EXACT_TOL))


def _near(t: FloatArray, have: FloatArray, tol: float) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """For each ``t``, whether a sorted ``have`` holds a value within ``tol``."""
    idx = np.searchsorted(have, t)
    lo = np.abs(t - have[np.clip(idx - 1, 0, len(have) - 1)])
    hi = np.abs(have[np.clip(idx, 0, len(have) - 1)] - t)
    return np.asarray(np.minimum(lo, hi) <= tol)


def _chunks(items: Iterator[Any], n: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for item in items:
        buf.append(item)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf

