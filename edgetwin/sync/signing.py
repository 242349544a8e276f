"""The device's Ed25519 signing key, kept only as an encrypted store record."""

from __future__ import annotations

import base64
import hashlib
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgetwin.errors import DataCorrupt
from edgetwin.privacy.records import RecordStore

KIND = "device"
KEY = "signing_key"


class DeviceKey:
    """Signs uplink envelopes; the private key never touches the disk in clear."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def __repr__(self) -> str:
        return f"DeviceKey(key_id={self.key_id})"

    @property
    def public_b64(self) -> str:
        """The public key as unpadded base64url (what a collector enrolls)."""
        return b64encode(self.public_raw)

    @property
    def key_id(self) -> str:
        """A short fingerprint of the public key."""
        return key_id(self.public_raw)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    @classmethod
    def generate(cls) -> DeviceKey:
        return cls(Ed25519PrivateKey.generate())


def load_or_create(store: RecordStore) -> DeviceKey:
    """The twin's device key; made and stored (audited) on first use."""
    record = store.get_record(KIND, KEY)
    if record is None:
        with store.transaction():
            # Re-read under the write lock: a concurrent process may have made it.
            record = store.get_record(KIND, KEY)
            if record is None:
                key = DeviceKey.generate()
                raw = key._private.private_bytes_raw()
                store.put_record(KIND, KEY, {"ed25519": b64encode(raw), "created": time.time()})
                store.audit("sync.device_key_created", key_id=key.key_id)
                return key
    try:
        raw = b64decode(str(record["ed25519"]))
        return DeviceKey(Ed25519PrivateKey.from_private_bytes(raw))
    except (KeyError, ValueError) as exc:
        raise DataCorrupt(
            "the device signing key record is damaged",
            hint="run 'edgetwin verify'; the key cannot be recovered",
        ) from exc


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """An enrolled device's public key; ValueError if it is not 32 base64url bytes."""
    raw = b64decode(text.strip())
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, this one {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Decode unpadded base64url; ValueError on anything else."""
    if not isinstance(text, str):
        raise ValueError("base64 text expected")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not base64url: {exc}") from None
