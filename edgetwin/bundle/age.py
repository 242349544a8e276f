"""The age layer of a bundle: pyrage (the Rust age implementation) does all the cryptography.

Recipient mode streams: :func:`encrypt_stream` and :func:`decrypt_stream` run
pyrage's ``encrypt_io``/``decrypt_io`` over Python file objects, so memory
stays flat however large the bundle. pyrage 1.4 has no streaming API for
passphrases (``pyrage.passphrase`` encrypts and decrypts ``bytes``), so
passphrase bundles are built in memory and capped at ``limit`` bytes: past
that, edgetwin refuses and points at recipient mode.

Only the unencrypted header *lines* are looked at here (which recipient types
the file names), to give precise errors; nothing of age is re-implemented.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from edgetwin.errors import DataCorrupt, UsageError, WrongKey

_LOGGER = logging.getLogger(__name__)

AGE_MAGIC = b"age-encryption.org/v1\n"
_MAX_HEADER = 64 * 1024
_CHUNK = 64 * 1024
_TAG = 16
_NONCE = 16


@dataclass(frozen=True)
class AgeHeader:
    """What the clear header of an age file says: recipient stanza types and its length."""

    stanza_types: tuple[str, ...]
    length: int

    @property
    def passphrase(self) -> bool:
        return "scrypt" in self.stanza_types


def parse_recipients(texts: list[str]) -> list[Any]:
    """age public keys (``age1...``) or lines of a recipients file; UsageError names a bad one."""
    import pyrage

    out: list[Any] = []
    for raw in texts:
        text = raw.strip()
        try:
            out.append(pyrage.x25519.Recipient.from_str(text))
        except pyrage.RecipientError:
            try:
                out.append(pyrage.ssh.Recipient.from_str(text))
            except pyrage.RecipientError as exc:
                raise UsageError(
                    f"--recipient {text[:24]!r} is not an age public key",
                    hint="use the 'age1...' line that age-keygen prints (or an ssh-ed25519 key)",
                ) from exc
    if not out:
        raise UsageError("give at least one --recipient (an 'age1...' public key)")
    return out


def load_identities(path: Path) -> list[Any]:
    """The X25519 identities (``AGE-SECRET-KEY-1...`` lines) of an age-keygen identity file."""
    import pyrage

    try:
        with path.open("rb") as f:
            # The identity is the person's age key, not the twin's secret, and the age CLI reads
            # it whatever its mode (`age-keygen > key.txt` under umask 022 gives 0644): warn with
            # the chmod to run instead of refusing the bundle it was made to open.
            mode = os.fstat(f.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                _LOGGER.warning(
                    "identity file %s is open to other users (mode %o): run 'chmod 600 %s'",
                    path, stat.S_IMODE(mode), path,
                )
            text = f.read().decode("utf-8")
    except FileNotFoundError as exc:
        raise UsageError(f"identity file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read identity file {path}: {exc}") from exc
    identities: list[Any] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError as exc:
            raise UsageError(
                f"identity file {path}, line {number}: not an age secret key",
                hint="use a file made by 'age-keygen -o FILE' (lines 'AGE-SECRET-KEY-1...')",
            ) from exc
    if not identities:
        raise UsageError(
            f"identity file {path} holds no 'AGE-SECRET-KEY-1...' line",
            hint="make one with 'age-keygen -o FILE'",
        )
    return identities


def read_header(path: Path) -> AgeHeader:
    """The clear header of an age file; DataCorrupt when it is not one or is cut short."""
    try:
        with path.open("rb") as f:
            head = f.read(_MAX_HEADER)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    if not head.startswith(AGE_MAGIC):
        if head.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----"):
            raise UsageError(
                f"{path} is ASCII-armored; edgetwin writes and reads binary bundles",
                hint="dearmor it first: age -d ... or re-export without armor",
            )
        raise DataCorrupt(
            f"{path} is not an age-encrypted bundle (it does not start with the age v1 header)",
            hint="check the file name; bundles come from 'edgetwin export'",
        )
    types: list[str] = []
    pos = len(AGE_MAGIC)
    while True:
        end = head.find(b"\n", pos)
        if end < 0:
            raise DataCorrupt(
                f"{path}: the age header is cut short (the file is truncated)",
                hint="copy the bundle again from its source",
            )
        line = head[pos:end]
        pos = end + 1
        if line.startswith(b"-> "):
            parts = line[3:].split(b" ")
            types.append(parts[0].decode("ascii", "replace"))
        elif line.startswith(b"--- "):
            if len(line) != 4 + 43 or not _is_b64(line[4:]):
                raise DataCorrupt(f"{path}: the age header's MAC line is damaged")
            break
        elif not _is_b64(line) or len(line) > 64:
            raise DataCorrupt(f"{path}: the age header is damaged (a stanza line is not base64)")
    if not types:
        raise DataCorrupt(f"{path}: the age header names no recipient")
    return AgeHeader(tuple(types), pos)


def encrypt_stream(reader: Any, writer: IO[bytes], recipients: list[Any]) -> None:
    """Encrypt everything ``reader`` yields into ``writer`` for ``recipients`` (streamed)."""
    import pyrage

    try:
        pyrage.encrypt_io(reader, writer, recipients)
    except pyrage.EncryptError as exc:
        raise UsageError(f"age could not encrypt the bundle: {exc}") from exc


def encrypt_passphrase(plaintext: bytes, passphrase: str) -> bytes:
    """age scrypt encryption of ``plaintext`` (in memory: pyrage has no passphrase stream)."""
    import pyrage

    try:
        result: bytes = pyrage.passphrase.encrypt(plaintext, passphrase)
    except pyrage.EncryptError as exc:
        raise UsageError(f"age could not encrypt the bundle: {exc}") from exc
    return result


def decrypt_stream(path: Path, writer: Any, identities: list[Any]) -> None:
    """Decrypt the age file at ``path`` into ``writer``, chunk by authenticated chunk.

    A header that no identity opens is WrongKey; a payload that fails
    authentication (truncated, altered) is DataCorrupt. ``writer`` may stop
    the stream by raising; the caller then reports its own error.
    """
    import pyrage

    header = read_header(path)
    if header.passphrase:
        raise WrongKey(
            f"{path} was encrypted with a passphrase, not for an identity",
            hint="use --passphrase",
        )
    try:
        with path.open("rb") as src:
            pyrage.decrypt_io(src, writer, identities)
    except pyrage.DecryptError as exc:
        # raised while reading the header: no stanza opened with these identities
        raise WrongKey(
            f"none of the identities opens {path}: it was encrypted for other recipients "
            "(or its header was altered)",
            hint="use the identity file whose public key the bundle was exported to",
        ) from exc
    except OSError as exc:
        # decrypt_io reports payload failures as I/O errors of its reader
        raise DataCorrupt(
            f"{path} fails authentication: it was truncated or altered after it was written",
            hint="copy the bundle again from its source; nothing was imported",
        ) from exc


def decrypt_passphrase(path: Path, passphrase: str, limit: int) -> bytes:
    """Decrypt a passphrase bundle in memory (refused past ``limit`` bytes)."""
    import pyrage

    header = read_header(path)
    if not header.passphrase:
        raise WrongKey(
            f"{path} was encrypted for age recipients, not with a passphrase",
            hint="use --identity FILE with the matching age-keygen identity",
        )
    size = path.stat().st_size
    if size > limit + _MAX_HEADER + (limit // _CHUNK + 2) * _TAG:
        raise UsageError(
            f"{path} is {size} bytes: passphrase bundles are decrypted in memory and this "
            f"one exceeds the limit of {limit} bytes",
            hint="raise --passphrase-limit-mb if the machine has the memory",
        )
    blob = path.read_bytes()
    try:
        return bytes(pyrage.passphrase.decrypt(blob, passphrase))
    except pyrage.DecryptError as exc:
        # pyrage reports a wrong passphrase and a damaged payload with one error type
        raise WrongKey(
            f"the passphrase does not open {path}, or the file was truncated or altered",
            hint="check the passphrase; if it is right, copy the bundle again",
        ) from exc


def expected_size(header_len: int, plaintext_len: int) -> int:
    """Size of an age file with this header length and plaintext length."""
    chunks = max(1, -(-plaintext_len // _CHUNK))
    return header_len + _NONCE + plaintext_len + chunks * _TAG


def check_written(path: Path, plaintext_len: int) -> None:
    """Refuse an output whose size does not match the plaintext (e.g. a silently full disk)."""
    header = read_header(path)
    want = expected_size(header.length, plaintext_len)
    got = path.stat().st_size
    if got != want:
        raise DataCorrupt(
            f"{path} is {got} bytes but should be {want}: the bundle was not completely written",
            hint="check free space on the target disk and export again",
        )


def _is_b64(data: bytes) -> bool:
    if not data:
        return True
    try:
        base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True
