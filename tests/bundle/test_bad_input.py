"""Bad bundles are refused with a precise error; nothing lands outside the target, nothing
is half-imported."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pyrage
import pytest

from edgetwin.bundle import import_bundle
from edgetwin.bundle.age import load_identities
from edgetwin.errors import DataCorrupt, WrongKey
from edgetwin.store import Secret
from tests.bundle.conftest import AgeKey, tree


def _import(path: Path, key: AgeKey, home: Path) -> None:
    import_bundle(path, home, identities=load_identities(key.path), secret=Secret.passphrase("x"))


def _refused(tmp_path: Path, bundle: Path, key: AgeKey, error: type[Exception],
             match: str) -> None:
    before = tree(tmp_path)
    home = tmp_path / "target"
    with pytest.raises(error, match=match):
        _import(bundle, key, home)
    assert tree(tmp_path) == before  # no target, no staging left, nothing beside it


def _manifest(members: dict[str, bytes | int]) -> dict[str, Any]:
    out = {}
    for name, data in members.items():
        if isinstance(data, int):
            out[name] = {"size": data, "sha256": "0" * 64}
        else:
            out[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return {"format": "edgetwin-bundle", "format_version": 1, "bundle_id": "b" * 32,
            "twin_id": "t" * 32, "created": 1.0, "streams": [], "records": {},
            "members": out}


def _crafted(tmp_path: Path, key: AgeKey, entries: list[tarfile.TarInfo | tuple[str, bytes]],
             manifest: dict[str, Any] | None, *, manifest_first: bool = True) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        items: list[tarfile.TarInfo | tuple[str, bytes]] = list(entries)
        if manifest is not None:
            m = ("manifest.json", json.dumps(manifest).encode())
            items = [m, *items] if manifest_first else [*items, m]
        for item in items:
            if isinstance(item, tarfile.TarInfo):
                tf.addfile(item)
            else:
                info = tarfile.TarInfo(item[0])
                info.size = len(item[1])
                tf.addfile(info, io.BytesIO(item[1]))
    out = tmp_path / "crafted.age"
    out.write_bytes(pyrage.encrypt(buf.getvalue(), [pyrage.x25519.Recipient.from_str(key.public)]))
    return out


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info


@pytest.mark.parametrize(
    ("entry", "declared", "match"),
    [
        (("../evil.csv", b"x"), "../evil.csv", r"climbs out of the bundle"),
        (("signals/../../evil.csv", b"x"), "signals/../../evil.csv", r"climbs out"),
        (("/tmp/evil.csv", b"x"), "/tmp/evil.csv", r"absolute path"),
        (_special("signals/a.csv", tarfile.SYMTYPE, "/etc/passwd"), "signals/a.csv",
         r"'signals/a.csv' is a symbolic link"),
        (_special("signals/a.csv", tarfile.LNKTYPE, "manifest.json"), "signals/a.csv",
         r"is a hard link"),
        (_special("signals/a.csv", tarfile.CHRTYPE), "signals/a.csv", r"is a device file"),
        (_special("signals", tarfile.DIRTYPE), "signals", r"is a directory"),
    ],
)
def test_unsafe_members_are_refused(tmp_path: Path, key: AgeKey, entry: Any, declared: str,
                                    match: str) -> None:
    manifest = _manifest({"signals/ok.csv": b"fine"})
    manifest["members"][declared] = {"size": 1, "sha256": "0" * 64}
    del manifest["members"]["signals/ok.csv"]
    if declared.startswith(("/", "..", "signals/..")):
        manifest["members"] = {}  # the member itself is refused, listed or not
    bundle = _crafted(tmp_path, key, [entry], manifest)
    _refused(tmp_path, bundle, key, DataCorrupt, match)
    assert not (tmp_path.parent / "evil.csv").exists()


def test_member_far_larger_than_declared_is_refused_before_its_data(tmp_path: Path,
                                                                     key: AgeKey) -> None:
    big = b"\0" * (4 << 20)
    bundle = _crafted(tmp_path, key, [("audit.jsonl", big)], _manifest({"audit.jsonl": 10}))
    _refused(tmp_path, bundle, key, DataCorrupt,
             r"'audit.jsonl' is 4194304 bytes but the manifest declares 10")


@pytest.mark.parametrize(
    ("entries", "manifest_members", "match", "first"),
    [
        ([("extra.txt", b"?")], {}, r"'extra.txt' is not listed in the manifest", True),
        ([("audit.jsonl", b"tampered")], {"audit.jsonl": b"original"},
         r"'audit.jsonl' does not match its sha256", True),
        ([("audit.jsonl", b"a")], {"audit.jsonl": b"a", "timeline.csv": b"t"},
         r"lacks 1 member\(s\) its manifest lists: timeline.csv", True),
        ([("audit.jsonl", b"a")], {"audit.jsonl": b"a"}, r"first member is 'audit.jsonl'", False),
        ([("audit.jsonl", b"a"), ("audit.jsonl", b"a")], {"audit.jsonl": b"a"},
         r"appears twice", True),
    ],
)
def test_archive_that_disagrees_with_its_manifest_is_refused(
    tmp_path: Path, key: AgeKey, entries: list[Any], manifest_members: dict[str, bytes],
    match: str, first: bool,
) -> None:
    bundle = _crafted(tmp_path, key, entries, _manifest(manifest_members), manifest_first=first)
    _refused(tmp_path, bundle, key, DataCorrupt, match)


def test_malformed_manifest_is_refused_naming_the_field(tmp_path: Path, key: AgeKey) -> None:
    manifest = _manifest({"signals/a.csv": b"timestamp,hr\n"})
    manifest["streams"] = [{"name": "a", "format": "edf", "channels": ["hr"], "units": ["bpm"],
                            "meta": {}, "samples": 1, "rate_hz": -1, "segments": []}]
    bundle = _crafted(tmp_path, key, [("signals/a.csv", b"timestamp,hr\n")], manifest)
    _refused(tmp_path, bundle, key, DataCorrupt, r"streams\[0\].rate_hz must be positive")


def test_member_that_does_not_decode_stops_the_import_whole(tmp_path: Path, key: AgeKey) -> None:
    csv = b"timestamp,hr\n1.0,60\nnot-a-time,61\n"
    manifest = _manifest({"signals/a.csv": csv})
    manifest["streams"] = [{"name": "a", "format": "csv", "channels": ["hr"], "units": ["bpm"],
                            "meta": {}, "samples": 2, "member": "signals/a.csv"}]
    bundle = _crafted(tmp_path, key, [("signals/a.csv", csv)], manifest)
    _refused(tmp_path, bundle, key, DataCorrupt, r"a.csv, line 3: not a number")


def test_wrong_identity_is_wrong_key(bundle: Path, other_key: AgeKey, tmp_path: Path) -> None:
    _refused(tmp_path, bundle, other_key, WrongKey, r"none of the identities opens")


@pytest.mark.parametrize("cut", [1, 100, 70_000])
def test_truncated_bundle_is_refused(bundle: Path, key: AgeKey, tmp_path: Path,
                                     cut: int) -> None:
    data = bundle.read_bytes()
    bundle.write_bytes(data[:-cut])
    _refused(tmp_path, bundle, key, DataCorrupt, r"truncated or altered")


def test_flipped_payload_byte_is_refused(bundle: Path, key: AgeKey, tmp_path: Path) -> None:
    data = bytearray(bundle.read_bytes())
    data[len(data) * 2 // 3] ^= 0x04
    bundle.write_bytes(bytes(data))
    _refused(tmp_path, bundle, key, DataCorrupt, r"fails authentication")


def test_damaged_header_and_foreign_files_are_refused(bundle: Path, key: AgeKey,
                                                      tmp_path: Path) -> None:
    data = bytearray(bundle.read_bytes())
    data[3] ^= 0x20
    bundle.write_bytes(bytes(data))
    _refused(tmp_path, bundle, key, DataCorrupt, r"not an age-encrypted bundle")
    bundle.write_bytes(bytes(data[:30]))
    _refused(tmp_path, bundle, key, DataCorrupt, r"not an age-encrypted bundle")
    data[3] ^= 0x20
    bundle.write_bytes(bytes(data[:40]))
    _refused(tmp_path, bundle, key, DataCorrupt, r"header is cut short")


def test_identity_for_a_passphrase_bundle_says_which(tmp_path: Path, key: AgeKey) -> None:
    bundle = tmp_path / "p.age"
    bundle.write_bytes(pyrage.passphrase.encrypt(b"x" * 10, "pw"))
    _refused(tmp_path, bundle, key, WrongKey, r"encrypted with a passphrase")
    before = tree(tmp_path)
    with pytest.raises(WrongKey, match="does not open"):
        import_bundle(bundle, tmp_path / "t", passphrase="not pw", secret=Secret.passphrase("x"))
    assert tree(tmp_path) == before


@pytest.mark.parametrize("splice", [b"\x00\x03", b"\x00"], ids=["tokenize-error", "huge-header"])
def test_a_spliced_npy_header_is_one_line_of_data_corrupt(splice: bytes) -> None:
    """Two headers the hostile-import property found: bytes spliced into a .npy header's
    length made numpy raise tokenize's TokenError (it escaped as a traceback, exit 1) or a
    ValueError of three lines (the refusal must be one)."""
    import numpy as np

    from edgetwin.bundle.formats import _npy_header

    buf = io.BytesIO()
    np.save(buf, np.arange(5000, dtype="<f8"))
    raw = buf.getvalue()
    spliced = io.BytesIO(raw[:7] + splice + raw[7:])
    with pytest.raises(DataCorrupt) as err:
        _npy_header(spliced, Path("muse.eeg.times.npy"), 5000)
    assert str(err.value).startswith("muse.eeg.times.npy is not a readable .npy file: ")
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
