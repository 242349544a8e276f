"""``manifest.json``: what a bundle holds, and the sha256 and size of every other member.

Import trusts nothing in the archive that the manifest does not vouch for,
and nothing in the manifest that does not have the expected shape: every
field is checked here with an error naming it.
"""

from __future__ import annotations

import math
import re
from typing import Any

from edgetwin.bundle.tarstream import MANIFEST, check_member_name
from edgetwin.errors import DataCorrupt

FORMAT = "edgetwin-bundle"
FORMAT_VERSION = 2  # 2: EDF streams as recordings with exact timestamps (1 still reads)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
STREAM_FORMATS = ("edf", "snirf", "csv")


def validate(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Check a parsed manifest; return its members ``{name: {"size", "sha256"}}``."""
    if doc.get("format") != FORMAT:
        raise DataCorrupt(f"{MANIFEST}: 'format' is {doc.get('format')!r}, not {FORMAT!r}")
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise DataCorrupt(f"{MANIFEST}: 'format_version' is missing")
    if version > FORMAT_VERSION:
        raise DataCorrupt(
            f"the bundle has format version {version}; this edgetwin reads up to {FORMAT_VERSION}",
            hint="upgrade edgetwin to import it",
        )
    _str(doc, "bundle_id", "")
    _str(doc, "twin_id", "")
    _num(doc, "created", "")
    members = _dict(doc, "members", "")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in members.items():
        check_member_name(name)
        if name == MANIFEST:
            raise DataCorrupt(f"{MANIFEST}: it lists itself as a member")
        where = f"members[{name!r}]"
        if not isinstance(entry, dict):
            raise DataCorrupt(f"{MANIFEST}: {where} is not an object")
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise DataCorrupt(f"{MANIFEST}: {where}.size is not a byte count")
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise DataCorrupt(f"{MANIFEST}: {where}.sha256 is not a sha256 hex digest")
        out[name] = {"size": size, "sha256": digest}
    for i, s in enumerate(_list(doc, "streams", "")):
        _stream(s, f"streams[{i}]", out)
    for key in ("timeline", "predictions", "audit", "markers"):
        part = doc.get(key)
        if part is not None:
            if not isinstance(part, dict):
                raise DataCorrupt(f"{MANIFEST}: '{key}' is not an object")
            _member_ref(part, "member", key, out)
    records = _dict(doc, "records", "")
    for kind, entry in records.items():
        if not isinstance(entry, dict):
            raise DataCorrupt(f"{MANIFEST}: records[{kind!r}] is not an object")
        _member_ref(entry, "member", f"records[{kind!r}]", out)
    config = doc.get("config")
    if config is not None:
        if not isinstance(config, dict):
            raise DataCorrupt(f"{MANIFEST}: 'config' is not an object")
        _member_ref(config, "member", "config", out)
    return out


def _stream(s: Any, where: str, members: dict[str, dict[str, Any]]) -> None:
    if not isinstance(s, dict):
        raise DataCorrupt(f"{MANIFEST}: {where} is not an object")
    _str(s, "name", where)
    fmt = _str(s, "format", where)
    if fmt not in STREAM_FORMATS:
        raise DataCorrupt(f"{MANIFEST}: {where}.format {fmt!r} is not one of {STREAM_FORMATS}")
    channels = _list(s, "channels", where)
    units = _list(s, "units", where)
    if not channels or len(channels) != len(units) or not all(
        isinstance(c, str) for c in channels + units
    ):
        raise DataCorrupt(f"{MANIFEST}: {where} needs matching lists of channel names and units")
    if len(set(channels)) != len(channels):
        raise DataCorrupt(f"{MANIFEST}: {where} names a channel twice")
    _dict(s, "meta", where)
    _int(s, "samples", where)
    if fmt == "edf":
        rate = _num(s, "rate_hz", where)
        if not rate > 0:
            raise DataCorrupt(f"{MANIFEST}: {where}.rate_hz must be positive")
        if "recordings" in s:
            total = 0
            for j, rec in enumerate(_list(s, "recordings", where)):
                w = f"{where}.recordings[{j}]"
                if not isinstance(rec, dict):
                    raise DataCorrupt(f"{MANIFEST}: {w} is not an object")
                _member_ref(rec, "member", w, members)
                _member_ref(rec, "timestamps", w, members)
                _num(rec, "start", w)
                n = _int(rec, "samples", w)
                if _int(rec, "positions", w) < n:
                    raise DataCorrupt(f"{MANIFEST}: {w} has fewer positions than samples")
                total += n
            if total != _int(s, "samples", where):
                raise DataCorrupt(f"{MANIFEST}: {where}'s recordings do not add up to its samples")
            return
        for j, seg in enumerate(_list(s, "segments", where)):
            w = f"{where}.segments[{j}]"
            if not isinstance(seg, dict):
                raise DataCorrupt(f"{MANIFEST}: {w} is not an object")
            _member_ref(seg, "member", w, members)
            _num(seg, "t0", w)
            _int(seg, "samples", w)
    else:
        _member_ref(s, "member", where, members)
        if fmt == "snirf":
            _num(s, "t_ref", where)


def _member_ref(obj: dict[str, Any], key: str, where: str, members: dict[str, Any]) -> str:
    name = _str(obj, key, where)
    if name not in members:
        raise DataCorrupt(f"{MANIFEST}: {where}.{key} {name!r} is not among its members")
    return name


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v:
        raise DataCorrupt(f"{MANIFEST}: {_at(where, key)} is missing or not text")
    return v


def _num(obj: dict[str, Any], key: str, where: str) -> float:
    v = obj.get(key)
    try:
        x = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan
    except OverflowError:  # an integer past float range
        x = math.nan
    if not math.isfinite(x):
        raise DataCorrupt(f"{MANIFEST}: {_at(where, key)} is missing or not a finite number")
    return x


def _int(obj: dict[str, Any], key: str, where: str) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise DataCorrupt(f"{MANIFEST}: {_at(where, key)} is missing or not a count")
    return v


def _list(obj: dict[str, Any], key: str, where: str) -> list[Any]:
    v = obj.get(key)
    if not isinstance(v, list):
        raise DataCorrupt(f"{MANIFEST}: {_at(where, key)} is missing or not a list")
    return v


def _dict(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    v = obj.get(key)
    if not isinstance(v, dict):
        raise DataCorrupt(f"{MANIFEST}: {_at(where, key)} is missing or not an object")
    return v


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else repr(key)
