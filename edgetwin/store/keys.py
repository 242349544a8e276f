"""Key hierarchy: secret → KEK → master key → data keys, and the keystore file.

::

    passphrase ──Argon2id──┐
                           ├─▶ KEK ──wraps──▶ master key (32 random bytes)
    key file ───HKDF───────┘                     │
                                                 ├─HKDF─▶ stream-id key (names → opaque ids)
                                                 ├─HKDF─▶ DEK-wrapping key ──wraps──▶ data keys
                                                 ├─HKDF─▶ audit MAC key, audit sealing key
                                                 └─HKDF─▶ twin check key

One data key (AES-256-GCM) exists per stream (or per series: feature frames,
predictions; per record kind) per UTC day, so forgetting a stream or a span
of days destroys a handful of keys.

**Where keys live.** The master key and every data key are stored only
wrapped, in ``keystore.json`` next to ``twin.db`` — never in the database.
That split is what makes forgetting final: ``forget`` rewrites the keystore
without the destroyed keys (write a new file, fsync, rename over the old one,
then overwrite the old file's blocks through a descriptor still open on it).
A copy of ``twin.db`` (with its ``-wal``) taken before the forget, together
with the passphrase and today's keystore, can no longer decrypt the forgotten
rows: their keys exist nowhere. A copy of the *whole home* (database and
keystore) taken before the forget can, with the passphrase, still read what it
contained — no software can take back a copy it does not control.

**Argon2id parameters** (RFC 9106 "second recommended option"): memory
64 MiB, 3 passes, 4 lanes. A Raspberry Pi 4 (Cortex-A72, 4 cores, LPDDR4) has
the four cores the lanes use and the memory even on its 1 GB model; OpenSSL's
portable Argon2 on it runs these parameters in about half a second, which is
the budget for an unlock on boot or a CLI command. On the x86 build machine
the same derivation takes ~0.1 s wall / 0.15 s CPU (``scripts/bench_store.py``
reports it as ``unlock_s``). The parameters are stored per passphrase slot, so
they can be raised later (``keys change-passphrase`` writes the current
defaults) without breaking old twins. ``EDGETWIN_KDF_PROFILE=test`` selects
cheap parameters at creation only, for test suites; unlocking always uses the
parameters stored with the twin.

Secrets in memory are Python ``bytes``; they cannot be reliably zeroed or kept
out of swap. They never appear in reprs, logs or exception messages.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import struct
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgetwin.errors import DataCorrupt, HomeError, StoreFull, UsageError, WrongKey

_LOGGER = logging.getLogger(__name__)

KEYSTORE_FILE = "keystore.json"
KDF_PROFILE_ENV = "EDGETWIN_KDF_PROFILE"
KEY_BYTES = 32
MIN_KEYFILE_BYTES = 32
_FORMAT = "edgetwin-keystore"
_VERSION = 1


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters of a passphrase slot."""

    iterations: int = 3
    lanes: int = 4
    memory_kib: int = 64 * 1024

    @classmethod
    def default(cls) -> KdfParams:
        """The documented production parameters (see the module docstring)."""
        return cls()

    @classmethod
    def for_tests(cls) -> KdfParams:
        """Cheap parameters: only for throw-away twins in test suites."""
        return cls(iterations=1, lanes=1, memory_kib=64)

    @classmethod
    def from_env(cls) -> KdfParams:
        """The default, or the test profile when ``EDGETWIN_KDF_PROFILE=test``."""
        profile = os.environ.get(KDF_PROFILE_ENV, "")
        if profile == "test":
            _LOGGER.warning("using cheap test KDF parameters (%s=test)", KDF_PROFILE_ENV)
            return cls.for_tests()
        if profile not in ("", "default"):
            raise UsageError(
                f"{KDF_PROFILE_ENV}={profile!r} is not a known KDF profile",
                hint="unset it, or use 'default' (or 'test' in test suites only)",
            )
        return cls.default()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": "argon2id",
            "iterations": self.iterations,
            "lanes": self.lanes,
            "memory_kib": self.memory_kib,
        }


class Secret:
    """What unlocks a twin: a passphrase or the bytes of a key file; never shown."""

    __slots__ = ("_kind", "_material", "_origin")

    def __init__(self, kind: str, material: bytes, origin: str) -> None:
        self._kind = kind
        self._material = material
        self._origin = origin

    @classmethod
    def passphrase(cls, text: str) -> Secret:
        """A passphrase; Unicode is NFC-normalised so every keyboard types the same key."""
        if not text:
            raise UsageError("the passphrase is empty", hint="choose a long passphrase")
        return cls("passphrase", unicodedata.normalize("NFC", text).encode("utf-8"), "passphrase")

    @classmethod
    def keyfile(cls, path: Path) -> Secret:
        """The bytes of a key file; refuses one that group or others may read."""
        try:
            st = path.stat()
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise UsageError(
                f"key file {path} does not exist",
                hint="pass the path written by 'edgetwin init --keyfile-new'",
            ) from exc
        except OSError as exc:
            raise UsageError(f"cannot read key file {path}: {exc.strerror}") from exc
        refuse_shared_secret("key file", path, st.st_mode)
        if len(data) < MIN_KEYFILE_BYTES:
            raise UsageError(
                f"key file {path} holds {len(data)} bytes; at least {MIN_KEYFILE_BYTES} are needed",
                hint="create one with 'edgetwin init --keyfile-new PATH'",
            )
        return cls("keyfile", data, f"key file {path}")

    @property
    def kind(self) -> str:
        """``passphrase`` or ``keyfile``."""
        return self._kind

    @property
    def origin(self) -> str:
        """Where the secret came from, for messages (never the secret)."""
        return self._origin

    def __repr__(self) -> str:
        return f"Secret({self._kind}, <hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")

    def _bytes(self) -> bytes:
        return self._material


def read_passphrase_file(path: Path) -> str:
    """A passphrase file's text without its final line break; refused, like a key file,
    when group or others may read it."""
    try:
        with path.open("rb") as f:
            # the mode of the file actually opened, not of whatever the name points to later
            mode = os.fstat(f.fileno()).st_mode
            refuse_shared_secret("passphrase file", path, mode)
            raw = f.read()
    except FileNotFoundError as exc:
        raise UsageError(f"passphrase file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"passphrase file {path} is a directory") from exc
    except OSError as exc:
        raise UsageError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"passphrase file {path} is not UTF-8 text (byte {exc.start})",
            hint="save it as UTF-8",
        ) from exc
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise UsageError(f"passphrase file {path} is empty")
    return text


def refuse_shared_secret(what: str, path: Path, mode: int) -> None:
    """A secret file that group or others may read or write is refused (exit 2)."""
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(
            f"{what} {path} is open to other users (mode {stat.S_IMODE(mode):o}): refused",
            hint=f"run 'chmod 600 {path}'",
        )


def new_keyfile(path: Path) -> None:
    """Write 32 random bytes to a new file with mode 0600; refuses to overwrite."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError as exc:
        raise UsageError(f"{path} already exists", hint="choose a new path") from exc
    except OSError as exc:
        raise HomeError(f"cannot create key file {path}: {exc.strerror}") from exc
    try:
        os.write(fd, secrets.token_bytes(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)


class MasterKeys:
    """Keys derived from the master key; held in memory only."""

    __slots__ = ("_master", "audit_mac", "audit_seal", "check", "dek_wrap", "sid_key", "twin_id")

    def __init__(self, master: bytes, twin_id: bytes) -> None:
        self._master = master
        self.twin_id = twin_id
        self.sid_key = _hkdf(master, b"edgetwin/stream-id/v1", twin_id)
        self.dek_wrap = AESGCM(_hkdf(master, b"edgetwin/dek-wrap/v1", twin_id))
        self.audit_mac = _hkdf(master, b"edgetwin/audit-mac/v1", twin_id)
        self.audit_seal = AESGCM(_hkdf(master, b"edgetwin/audit-seal/v1", twin_id))
        self.check = AESGCM(_hkdf(master, b"edgetwin/check/v1", twin_id))

    def __repr__(self) -> str:
        return "MasterKeys(<hidden>)"

    def keyed_id(self, label: bytes, name: str) -> bytes:
        """A 16-byte opaque id for a name: HMAC-SHA256 under the stream-id key."""
        return hmac.new(self.sid_key, label + b"\x00" + name.encode("utf-8"), "sha256").digest()[
            :16
        ]

    def wrap_master(self, kek: bytes, slot_kind: str) -> bytes:
        return _seal(AESGCM(kek), self._master, _master_ad(self.twin_id, slot_kind))

    def for_child(self) -> tuple[bytes, bytes]:
        """The master key and twin id, to hand to a child process of this package over a
        pipe (:meth:`TwinStore.handoff`); never to be written anywhere."""
        return self._master, self.twin_id


@dataclass(frozen=True)
class DekEntry:
    """A wrapped data key as stored in the keystore."""

    scope: bytes
    period: int
    wrapped: bytes


class Keystore:
    """``keystore.json``: passphrase/key-file slots wrapping the master key, and wrapped DEKs."""

    def __init__(self, path: Path, data: dict[str, Any], stamp: tuple[int, int, int]) -> None:
        self.path = path
        self.twin_id: bytes = bytes.fromhex(data["twin_id"])
        self.slots: list[dict[str, Any]] = list(data["slots"])
        self.deks: dict[int, DekEntry] = {
            int(k): DekEntry(bytes.fromhex(v[0]), int(v[1]), _b64d(v[2]))
            for k, v in data["deks"].items()
        }
        self.generation: int = int(data["generation"])
        self._stamp = stamp

    # -- creation and unlocking ----------------------------------------------

    @classmethod
    def create(
        cls, path: Path, twin_id: bytes, secret: Secret, kdf: KdfParams
    ) -> tuple[Keystore, MasterKeys]:
        """A new keystore with a fresh master key wrapped for ``secret``; written to disk."""
        master = secrets.token_bytes(KEY_BYTES)
        keys = MasterKeys(master, twin_id)
        store = cls(
            path,
            {"twin_id": twin_id.hex(), "slots": [], "deks": {}, "generation": 0},
            (0, 0, 0),
        )
        store.set_slot(keys, secret, kdf)
        store.save(exclusive=True)
        return store, keys

    @classmethod
    def load(cls, path: Path) -> Keystore:
        """Read and check the keystore; DataCorrupt if damaged, HomeError if absent."""
        for attempt in range(5):
            try:
                with path.open("rb") as fh:
                    st = os.fstat(fh.fileno())
                    raw = fh.read()
            except FileNotFoundError as exc:
                raise HomeError(
                    f"{path} is missing: without it the twin cannot be unlocked",
                    hint="restore the keystore from the backup you made with the twin, "
                    "or import an export bundle",
                ) from exc
            except OSError as exc:
                raise HomeError(f"cannot read {path}: {exc.strerror}") from exc
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            try:
                return cls(path, _parse_keystore(raw, path), stamp)
            except DataCorrupt:
                # A writer may have replaced and wiped the file while we read it: retry
                # while the file on the path keeps changing under us.
                with contextlib.suppress(OSError):
                    now = path.stat()
                    if (now.st_ino, now.st_mtime_ns, now.st_size) != stamp and attempt < 4:
                        time.sleep(0.02)
                        continue
                raise
        raise AssertionError("unreachable")

    def unlock(self, secret: Secret) -> MasterKeys:
        """The master keys, or WrongKey when no slot of the secret's kind opens."""
        slots = [s for s in self.slots if s["kind"] == secret.kind]
        if not slots:
            have = ", ".join(sorted({s["kind"] for s in self.slots})) or "none"
            raise WrongKey(
                f"this twin cannot be unlocked with a {secret.kind}",
                hint=f"it has slots for: {have}; use "
                + ("--keyfile" if secret.kind == "passphrase" else "a passphrase"),
            )
        for slot in slots:
            kek = _derive_kek(secret, slot)
            try:
                ad = _master_ad(self.twin_id, slot["kind"])
                master = _open(AESGCM(kek), _b64d(slot["wrapped"]), ad)
            except InvalidTag:
                continue
            return MasterKeys(master, self.twin_id)
        what = "passphrase" if secret.kind == "passphrase" else secret.origin
        raise WrongKey(
            f"the {what} does not unlock the twin at {self.path.parent}",
            hint="check it and try again; nothing was changed",
        )

    def set_slot(self, keys: MasterKeys, secret: Secret, kdf: KdfParams | None = None) -> None:
        """Add or replace the slot of the secret's kind (in memory; call save())."""
        salt = secrets.token_bytes(16)
        slot: dict[str, Any] = {"kind": secret.kind, "salt": _b64e(salt)}
        if secret.kind == "passphrase":
            slot["kdf"] = (kdf or KdfParams.default()).to_json()
        else:
            slot["kdf"] = {"name": "hkdf-sha256"}
        kek = _derive_kek(secret, slot)
        slot["wrapped"] = _b64e(keys.wrap_master(kek, secret.kind))
        self.slots = [s for s in self.slots if s["kind"] != secret.kind] + [slot]

    def remove_slot(self, kind: str) -> None:
        """Drop the slot of one kind; refuses to drop the last one."""
        rest = [s for s in self.slots if s["kind"] != kind]
        if not rest:
            raise UsageError(
                f"the {kind} slot is the only way to unlock this twin",
                hint="add another slot first",
            )
        self.slots = rest

    def kdf_params(self) -> KdfParams | None:
        """Argon2id parameters of the passphrase slot, if there is one."""
        for s in self.slots:
            if s["kind"] == "passphrase":
                k = s["kdf"]
                return KdfParams(int(k["iterations"]), int(k["lanes"]), int(k["memory_kib"]))
        return None

    # -- data keys -------------------------------------------------------------

    def add_dek(self, keys: MasterKeys, key_id: int, scope: bytes, period: int) -> bytes:
        """Make a fresh data key, wrap it under the master key; returns it (call save())."""
        dek = secrets.token_bytes(KEY_BYTES)
        wrapped = _seal(keys.dek_wrap, dek, _dek_ad(self.twin_id, key_id, scope, period))
        self.deks[key_id] = DekEntry(scope, period, wrapped)
        return dek

    def unwrap_dek(self, keys: MasterKeys, key_id: int) -> tuple[bytes, bytes, int] | None:
        """(key, scope, period) of a data key; None when the keystore lacks it."""
        entry = self.deks.get(key_id)
        if entry is None:
            return None
        try:
            ad = _dek_ad(self.twin_id, key_id, entry.scope, entry.period)
            dek = _open(keys.dek_wrap, entry.wrapped, ad)
        except InvalidTag as exc:
            raise DataCorrupt(
                f"{self.path}: data key {key_id} failed authentication",
                hint="the keystore was altered; restore it from a backup",
            ) from exc
        return dek, entry.scope, entry.period

    # -- persistence -------------------------------------------------------------

    def changed_on_disk(self) -> bool:
        """Whether another process replaced the file since we read or wrote it."""
        try:
            st = self.path.stat()
        except OSError:
            return True
        return (st.st_ino, st.st_mtime_ns, st.st_size) != self._stamp

    def reload(self) -> None:
        """Re-read the file (after another process changed it)."""
        fresh = Keystore.load(self.path)
        if fresh.twin_id != self.twin_id:
            raise DataCorrupt(f"{self.path} was replaced by the keystore of another twin")
        self.slots, self.deks, self.generation = fresh.slots, fresh.deks, fresh.generation
        self._stamp = fresh._stamp

    def save(self, *, exclusive: bool = False) -> None:
        """Atomically replace the file, then overwrite the old file's contents."""
        self.generation += 1
        body = {
            "format": _FORMAT,
            "version": _VERSION,
            "twin_id": self.twin_id.hex(),
            "generation": self.generation,
            "slots": self.slots,
            "deks": {
                str(k): [e.scope.hex(), e.period, _b64e(e.wrapped)]
                for k, e in sorted(self.deks.items())
            },
        }
        body["checksum"] = _checksum(body)
        data = json.dumps(body, indent=1, sort_keys=True).encode("utf-8")
        self._stamp = atomic_replace(self.path, data, exclusive=exclusive, wipe_old=True)


def atomic_replace(
    path: Path, data: bytes, *, exclusive: bool = False, wipe_old: bool = False
) -> tuple[int, int, int]:
    """Write ``data`` to ``path`` atomically and durably (mode 0600); returns its stat stamp.

    With ``wipe_old`` the replaced file's blocks are overwritten with zeros
    through a descriptor opened before the rename, so the old bytes do not
    linger in free space (on filesystems that write in place).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    old_fd: int | None = None
    try:
        if exclusive and path.exists():
            raise HomeError(f"{path} already exists", hint="a twin already lives here")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if wipe_old:
            with contextlib.suppress(FileNotFoundError):
                old_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        tmp.replace(path)
        _fsync_dir(path.parent)
        st = path.stat()
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if old_fd is not None:
            os.close(old_fd)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFull(
                f"no space left to write {path}",
                hint="free some disk space; nothing already saved was lost",
            ) from exc
        raise HomeError(f"cannot write {path}: {exc.strerror}") from exc
    if old_fd is not None:
        try:
            size = os.fstat(old_fd).st_size
            os.pwrite(old_fd, b"\x00" * size, 0)
            os.fsync(old_fd)
        except OSError as exc:  # the new file is in place; wiping is best effort
            _LOGGER.warning("could not wipe the replaced %s: %s", path.name, exc.strerror)
        finally:
            os.close(old_fd)
    return stamp


# -- private helpers -----------------------------------------------------------


def _derive_kek(secret: Secret, slot: dict[str, Any]) -> bytes:
    salt = _b64d(slot["salt"])
    if secret.kind == "passphrase":
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

        k = slot["kdf"]
        return Argon2id(
            salt=salt,
            length=KEY_BYTES,
            iterations=int(k["iterations"]),
            lanes=int(k["lanes"]),
            memory_cost=int(k["memory_kib"]),
        ).derive(secret._bytes())
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=b"edgetwin/kek/keyfile/v1"
    ).derive(secret._bytes())


def _hkdf(master: bytes, label: bytes, twin_id: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=twin_id, info=label).derive(
        master
    )


def _seal(aead: AESGCM, plaintext: bytes, ad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + aead.encrypt(nonce, plaintext, ad)


def _open(aead: AESGCM, sealed: bytes, ad: bytes) -> bytes:
    if len(sealed) < 28:
        raise InvalidTag
    return aead.decrypt(sealed[:12], sealed[12:], ad)


def _master_ad(twin_id: bytes, slot_kind: str) -> bytes:
    return b"edgetwin/master/v1\x00" + twin_id + slot_kind.encode()


def _dek_ad(twin_id: bytes, key_id: int, scope: bytes, period: int) -> bytes:
    return b"edgetwin/dek/v1\x00" + twin_id + struct.pack("<qq", key_id, period) + scope


def _checksum(body: dict[str, Any]) -> str:
    rest = {k: v for k, v in body.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode("utf-8")).hexdigest()


def _parse_keystore(raw: bytes, path: Path) -> dict[str, Any]:
    def bad(problem: str) -> DataCorrupt:
        return DataCorrupt(
            f"{path} is damaged: {problem}",
            hint="restore the keystore from a backup; without it the twin cannot be unlocked",
        )

    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad("not valid JSON") from exc
    if not isinstance(body, dict) or body.get("format") != _FORMAT:
        raise bad("not an edgetwin keystore")
    if body.get("version") != _VERSION:
        raise bad(f"unknown keystore version {body.get('version')!r}")
    if body.get("checksum") != _checksum(body):
        raise bad("checksum mismatch")
    try:
        bytes.fromhex(body["twin_id"])
        for slot in body["slots"]:
            _b64d(slot["wrapped"])
            _b64d(slot["salt"])
        for k, v in body["deks"].items():
            int(k)
            bytes.fromhex(v[0])
            int(v[1])
            _b64d(v[2])
        int(body["generation"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise bad("missing or malformed fields") from exc
    return body


def _b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
