"""Where export and import keep bundle members in clear while they work: files with no name.

Export must hash every member before the archive starts (the manifest comes
first), and import parses members with libraries that want a file (EDF,
HDF5). Both therefore need the plaintext on disk for a while. On Linux each
such file is created and at once unlinked, held open by this process and
reached through a symbolic link ``NAME -> /proc/PID/fd/N``: readers and
writers open ``NAME`` as usual, yet the data belongs to no directory entry.
When the process ends, by any means including SIGKILL, the kernel frees it;
what may stay behind is a dangling link and an empty directory, which
:func:`remove_leftovers` (run at every unlock, export and import) removes.
Where there is no ``/proc`` (or the process is short of descriptors) members
are ordinary files and only that clean-up bounds how long they outlive a crash.
"""

from __future__ import annotations

import logging
import os
import resource
import secrets
import shutil
import sys
from pathlib import Path

from edgetwin.errors import DataCorrupt, EdgetwinError, HomeError, StoreFull

_LOGGER = logging.getLogger(__name__)

EXPORT_PREFIX = ".export-"
_FD_DIR = Path("/proc/self/fd")


def import_prefix(home: Path) -> str:
    """Staging directories of imports into ``home`` live beside it, named with this prefix."""
    return f".{home.name}.import-"


def anonymous_files() -> bool:
    """Whether this system can hold staged members with no name (Linux ``/proc``)."""
    return sys.platform.startswith("linux") and _FD_DIR.is_dir()


class Spool:
    """Members of one export or import under ``root`` (a private 0700 directory).

    ``anonymous=False`` makes ordinary files (to unpack a bundle for inspection).
    """

    def __init__(self, root: Path, *, anonymous: bool = True) -> None:
        self.root = root
        self._held: list[int] = []
        self._anonymous = anonymous and anonymous_files()
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # leave most descriptors to the store, sockets and libraries
        self._max_held = max(0, (soft if soft != resource.RLIM_INFINITY else 4096) // 2 - 64)

    @property
    def anonymous(self) -> int:
        """How many members are held with no name."""
        return len(self._held)

    def create(self, name: str) -> tuple[Path, int]:
        """A new empty member ``root/name`` and a read-write descriptor on it (the caller's).

        ``FileExistsError`` when ``name`` is taken; the parent must exist and be
        a real directory (the caller checks member names and makes parents).
        """
        target = self.root / name
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        if not self._anonymous or len(self._held) >= self._max_held:
            return target, os.open(target, flags, 0o600)
        tmp = target.parent / f".spool-{secrets.token_hex(8)}"
        fd = os.open(tmp, flags, 0o600)
        held = -1
        try:
            tmp.unlink()
            held = os.dup(fd)  # keeps the data alive after the caller closes ``fd``
            # /proc/<pid>, not /proc/self: once we are gone the link leads nowhere
            target.symlink_to(Path("/proc") / str(os.getpid()) / "fd" / str(held))
        except BaseException:
            os.close(fd)
            if held >= 0:
                os.close(held)
            raise
        self._held.append(held)
        return target, fd

    def path(self, name: str) -> Path:
        """A new empty member ``root/name`` (parents made), for writers that open by path."""
        target = self.root / name
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _, fd = self.create(name)
        except OSError as exc:
            raise disk_error(target, exc) from exc
        os.close(fd)
        return target

    def release(self) -> None:
        """Let the kernel free every member (their links then dangle; remove ``root`` next)."""
        held, self._held = self._held, []
        for fd in held:
            os.close(fd)


def remove_leftovers(home: Path) -> None:
    """Remove what exports from ``home`` and imports into it left when they were killed."""
    remove_stale_staging(home, EXPORT_PREFIX)
    remove_stale_staging(home.parent, import_prefix(home))


def remove_stale_staging(parent: Path, prefix: str) -> None:
    """Remove staging directories whose process is gone (a staging name carries its pid)."""
    try:
        found = list(parent.glob(f"{prefix}*-*"))
    except OSError:
        return
    for p in found:
        pid_text = p.name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or p.is_symlink() or not p.is_dir():
            continue
        pid = int(pid_text)
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _LOGGER.warning("removing %s, left by an interrupted export or import", p)
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            continue  # alive, someone else's
        except OverflowError:
            continue  # not a pid we wrote


def disk_error(path: Path, exc: OSError) -> EdgetwinError:
    """A staging write that failed, as the error a person can act on."""
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(
            f"the disk under {path} is full while staging the bundle",
            hint="free some space; nothing was changed",
        )
    if exc.errno == errno.EEXIST:
        return DataCorrupt(f"bundle member {path.name!r} collides with another member")
    return HomeError(f"cannot write {path} while staging the bundle: {exc.strerror or exc}")
