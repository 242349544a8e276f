"""The tar inside a bundle: written as a stream, read by a strict push parser.

Writing yields POSIX ustar blocks member by member (``TarInfo.tobuf``), so the
encryptor pulls the archive without it ever existing whole. Reading takes the
decrypted bytes as they arrive (:class:`TarSink` is the ``writer`` of
``pyrage.decrypt_io``) and accepts only what edgetwin writes: regular files
with plain relative names, ``manifest.json`` first, every other member named
in it with its exact size and sha256. Anything else stops the stream with a
precise DataCorrupt before a byte of that member is written anywhere.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetwin.bundle.checks import TEXT_SUFFIXES, load_json
from edgetwin.bundle.staging import Spool
from edgetwin.errors import DataCorrupt, HomeError, StoreFull

BLOCK = 512
RECORD = 20 * BLOCK
MANIFEST = "manifest.json"
MAX_MANIFEST = 64 * 1024 * 1024
_READ = 1 << 20
_NAME_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")
_MAX_DEPTH = 3
_MAX_NAME = 99


@dataclass(frozen=True)
class Member:
    """A file to put in the archive."""

    name: str
    path: Path
    size: int


def check_member_name(name: str) -> str:
    """A member name edgetwin accepts: relative, no '..', no odd characters; else DataCorrupt."""
    if not name:
        raise DataCorrupt("a bundle member has an empty name")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise DataCorrupt(f"bundle member {name!r} has an absolute path: refused")
    parts = name.split("/")
    if any(p == ".." for p in parts):
        raise DataCorrupt(f"bundle member {name!r} climbs out of the bundle ('..'): refused")
    if len(name) > _MAX_NAME or len(parts) > _MAX_DEPTH or not all(
        _NAME_PART.match(p) for p in parts
    ):
        raise DataCorrupt(
            f"bundle member {name!r} is not a name edgetwin writes "
            "(letters, digits, '._-', at most 3 levels, 99 characters)"
        )
    return name


def tar_blocks(members: Iterable[Member], mtime: float) -> Iterator[bytes]:
    """The ustar archive of ``members``, block group by block group."""
    total = 0
    for m in members:
        check_member_name(m.name)
        info = tarfile.TarInfo(m.name)
        info.size = m.size
        info.mtime = int(mtime)
        info.mode = 0o600
        info.type = tarfile.REGTYPE
        info.uname = info.gname = ""
        header = info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
        total += len(header)
        yield header
        written = 0
        with m.path.open("rb") as f:
            while True:
                chunk = f.read(_READ)
                if not chunk:
                    break
                written += len(chunk)
                yield chunk
        if written != m.size:
            raise DataCorrupt(f"{m.path} changed size while it was archived")
        pad = -written % BLOCK
        if pad:
            yield bytes(pad)
        total += written + pad
    end = 2 * BLOCK
    total += end
    yield bytes(end + (-total % RECORD))


class IterReader(io.RawIOBase):
    """A read-only file over an iterator of byte strings (what ``encrypt_io`` pulls from)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = memoryview(b"")
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._it))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self.bytes_read += n
        return n


ManifestCheck = Callable[[dict[str, Any]], dict[str, dict[str, Any]]]


class TarSink:
    """The writer ``decrypt_io`` pushes the plaintext archive into; files land in ``root``.

    ``check_manifest`` validates the parsed manifest and returns the members
    it declares: ``{name: {"size": n, "sha256": hex}}``. With a ``spool`` the
    members are files with no name (see :mod:`edgetwin.bundle.staging`) that
    live until ``spool.release()``; without one, ordinary files.
    """

    def __init__(
        self, root: Path, check_manifest: ManifestCheck, spool: Spool | None = None
    ) -> None:
        self.root = root
        self._spool = spool if spool is not None else Spool(root, anonymous=False)
        self._check_manifest = check_manifest
        self._buf = bytearray()
        self._state = "header"
        self._member: tarfile.TarInfo | None = None
        self._remaining = 0
        self._pad = 0
        self._hash: Any = None
        self._fd: int | None = None
        self._text: Any = None  # a UTF-8 decoder while a text member streams by
        self._line = 1
        self._manifest_bytes = bytearray()
        self.manifest: dict[str, Any] | None = None
        self.declared: dict[str, dict[str, Any]] = {}
        self.seen: set[str] = set()
        self.received = 0
        self.ended = False
        self.error: BaseException | None = None

    # -- the file-like side -----------------------------------------------------------------

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        """Take the next plaintext bytes; raises (and remembers) the first problem."""
        if self.error is not None:
            raise self.error
        n = len(data)
        self.received += n
        try:
            self._buf += data
            self._drain()
        except BaseException as exc:
            self.error = exc
            self._close_fd()
            raise
        return n

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self._close_fd()

    def finish(self) -> None:
        """After the stream ended: the archive was complete and held every declared member."""
        if self.error is not None:
            raise self.error
        if not self.ended:
            raise DataCorrupt(
                "the bundle's archive ends in the middle (no end-of-archive marker)",
                hint="the bundle was cut short before it was encrypted; export it again",
            )
        if self.manifest is None:
            raise DataCorrupt("the bundle holds no manifest.json")
        missing = sorted(set(self.declared) - self.seen)
        if missing:
            raise DataCorrupt(
                f"the bundle lacks {len(missing)} member(s) its manifest lists: "
                + ", ".join(missing[:5]),
                hint="the bundle is incomplete; export it again",
            )

    # -- the parser ---------------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            if self._state == "header":
                if len(self._buf) < BLOCK:
                    return
                block = bytes(self._buf[:BLOCK])
                del self._buf[:BLOCK]
                self._header(block)
            elif self._state == "data":
                if not self._buf:
                    return
                take = min(self._remaining, len(self._buf))
                chunk = bytes(self._buf[:take])
                del self._buf[:take]
                self._data(chunk)
            elif self._state == "pad":
                take = min(self._pad, len(self._buf))
                if any(self._buf[:take]):
                    raise DataCorrupt("the bundle's archive has data between members")
                del self._buf[:take]
                self._pad -= take
                if self._pad:
                    return
                self._state = "header"
            else:  # "end": only zero blocks may follow the end-of-archive marker
                if any(self._buf):
                    raise DataCorrupt("the bundle's archive has data after its end")
                self._buf.clear()
                return

    def _header(self, block: bytes) -> None:
        if not any(block):
            if self.manifest is None:
                raise DataCorrupt("the bundle's archive is empty")
            self._state = "end"
            self.ended = True
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except (tarfile.HeaderError, UnicodeDecodeError) as exc:
            raise DataCorrupt(
                f"the bundle's archive has a damaged member header after {len(self.seen)} "
                f"member(s) ({type(exc).__name__})"
            ) from exc
        name = info.name
        kind = _kind(info)
        if kind != "file":
            raise DataCorrupt(f"bundle member {name!r} is a {kind}: only regular files are allowed")
        check_member_name(name)
        if name in self.seen:
            raise DataCorrupt(f"bundle member {name!r} appears twice")
        if self.manifest is None:
            if name != MANIFEST:
                raise DataCorrupt(
                    f"the bundle's first member is {name!r}; it must be {MANIFEST}"
                )
            if info.size > MAX_MANIFEST:
                raise DataCorrupt(f"{MANIFEST} is {info.size} bytes: far larger than any manifest")
        else:
            want = self.declared.get(name)
            if want is None:
                raise DataCorrupt(f"bundle member {name!r} is not listed in the manifest")
            if info.size != want["size"]:
                raise DataCorrupt(
                    f"bundle member {name!r} is {info.size} bytes but the manifest declares "
                    f"{want['size']}"
                )
            self._open_target(name)
            if name.endswith(TEXT_SUFFIXES):
                self._text = codecs.getincrementaldecoder("utf-8")("strict")
                self._line = 1
        self._member = info
        self._remaining = info.size
        self._pad = -info.size % BLOCK
        self._hash = hashlib.sha256()
        self._state = "data"
        if info.size == 0:
            self._end_member()

    def _data(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._remaining -= len(chunk)
        if self.manifest is None:
            self._manifest_bytes += chunk
        else:
            self._check_text(chunk)
            self._write(chunk)
        if self._remaining == 0:
            self._end_member()

    def _end_member(self) -> None:
        assert self._member is not None
        name = self._member.name
        digest = self._hash.hexdigest()
        self.seen.add(name)
        if self.manifest is None:
            doc = load_json(bytes(self._manifest_bytes), MANIFEST, finite=True)
            if not isinstance(doc, dict):
                raise DataCorrupt(f"{MANIFEST} is not a JSON object")
            self.declared = self._check_manifest(doc)
            self.manifest = doc
            self._manifest_bytes = bytearray()
        else:
            self._check_text(b"", final=True)
            self._text = None
            self._close_fd()
            want = self.declared[name]["sha256"]
            if digest != want:
                raise DataCorrupt(
                    f"bundle member {name!r} does not match its sha256 in the manifest "
                    f"(manifest {want[:12]}…, member {digest[:12]}…)",
                    hint="the bundle was altered before it was encrypted; nothing was imported",
                )
        self._member = None
        self._state = "pad" if self._pad else "header"

    def _check_text(self, chunk: bytes, *, final: bool = False) -> None:
        """A text member must be UTF-8 throughout: refused at the first bad byte, by line."""
        if self._text is None:
            return
        try:
            self._text.decode(chunk, final)
        except UnicodeDecodeError as exc:
            assert self._member is not None
            line = self._line + bytes(exc.object[: exc.start]).count(b"\n")
            bad = bytes(exc.object[exc.start : exc.start + 1]).hex() or "end"
            raise DataCorrupt(
                f"bundle member {self._member.name!r}, line {line}: not UTF-8 text "
                f"(byte 0x{bad})",
                hint="the bundle was not written by edgetwin; nothing was imported",
            ) from None
        self._line += chunk.count(b"\n")

    def _open_target(self, name: str) -> None:
        path = self.root
        parts = name.split("/")
        for part in parts[:-1]:
            path = path / part
            try:
                path.mkdir(mode=0o700, exist_ok=True)
            except OSError as exc:
                raise _disk_error(path, exc) from exc
            if path.is_symlink() or not path.is_dir():
                raise DataCorrupt(f"bundle member {name!r} would write through a non-directory")
        target = path / parts[-1]
        try:
            _, self._fd = self._spool.create(name)
        except FileExistsError as exc:
            raise DataCorrupt(f"bundle member {name!r} collides with another member") from exc
        except OSError as exc:
            raise _disk_error(target, exc) from exc

    def _write(self, chunk: bytes) -> None:
        assert self._fd is not None
        view = memoryview(chunk)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            raise _disk_error(self.root, exc) from exc

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _kind(info: tarfile.TarInfo) -> str:
    if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return "file"
    if info.issym():
        return "symbolic link"
    if info.islnk():
        return "hard link"
    if info.ischr() or info.isblk():
        return "device file"
    if info.isfifo():
        return "FIFO"
    if info.isdir():
        return "directory"
    if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME,
                     tarfile.GNUTYPE_LONGLINK, tarfile.SOLARIS_XHDTYPE):
        return "extended header"
    return f"member of type {info.type!r}"


def _disk_error(path: Path, exc: OSError) -> HomeError:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(
            f"the disk under {path} is full while unpacking the bundle",
            hint="free some space; nothing was imported",
        )
    return HomeError(f"cannot write {path} while unpacking the bundle: {exc.strerror}")
