"""The uplink wire format: a signed JSON envelope around one DPRelease.

::

    {"v": 1, "alg": "Ed25519", "device": "<base64url public key>",
     "payload": "<canonical JSON of the release>", "sent_at_ms": 1715000000000,
     "sig": "<base64url Ed25519 signature>"}

The signature covers ``b"edgetwin-release/1\\n" + sent_at_ms + b"\\n" + payload``:
the exact payload bytes (no re-canonicalisation at the collector) and the send
time (a captured envelope replayed later falls outside the collector's window).
``release.schema.json`` beside this module is the JSON Schema of both levels.

:func:`encode_envelope` is the only serialiser for the uplink and accepts
nothing but a genuine :class:`~edgetwin.privacy.release.DPRelease`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from cryptography.exceptions import InvalidSignature

from edgetwin.errors import MalformedInput
from edgetwin.privacy.release import DPRelease, canonical_json, check_record, require_genuine
from edgetwin.sync.signing import DeviceKey, b64decode, b64encode, public_key_from_b64

VERSION = 1
ALG = "Ed25519"
MAX_ENVELOPE_BYTES = 16 * 1024
_DOMAIN = b"edgetwin-release/1\n"
_ENVELOPE_KEYS = frozenset({"v", "alg", "device", "payload", "sent_at_ms", "sig"})


@dataclass(frozen=True)
class Envelope:
    """A decoded (not yet verified) envelope."""

    device: str
    payload: bytes
    release: dict[str, Any]
    sent_at_ms: int
    sig: bytes

    def verify(self, public_b64: str) -> None:
        """MalformedInput unless ``sig`` is the device's signature of payload and time."""
        try:
            public_key_from_b64(public_b64).verify(
                self.sig, signed_message(self.sent_at_ms, self.payload)
            )
        except (InvalidSignature, ValueError) as exc:
            raise MalformedInput(
                f"release {self.release.get('id')!r}: signature does not verify "
                f"against device {self.device[:12]}..",
            ) from exc


def encode_envelope(release: DPRelease, key: DeviceKey, sent_at_ms: int) -> bytes:
    """The signed wire bytes of ``release``; ForgedRelease for anything but a genuine one."""
    genuine = require_genuine(release)
    payload = canonical_json(genuine.to_record())
    sig = key.sign(signed_message(sent_at_ms, payload))
    return canonical_json(
        {
            "v": VERSION,
            "alg": ALG,
            "device": key.public_b64,
            "payload": payload.decode("ascii"),
            "sent_at_ms": int(sent_at_ms),
            "sig": b64encode(sig),
        }
    )


def decode_envelope(body: bytes) -> Envelope:
    """Parse and structurally check wire bytes; MalformedInput says what is wrong."""
    if len(body) > MAX_ENVELOPE_BYTES:
        raise MalformedInput(f"envelope of {len(body)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedInput(f"envelope is not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != _ENVELOPE_KEYS:
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise MalformedInput(f"envelope has keys {keys}, expected {sorted(_ENVELOPE_KEYS)}")
    if doc["v"] != VERSION or doc["alg"] != ALG:
        raise MalformedInput(f"envelope version {doc['v']!r} / alg {doc['alg']!r} not supported")
    sent = doc["sent_at_ms"]
    if isinstance(sent, bool) or not isinstance(sent, int) or sent < 0:
        raise MalformedInput("envelope sent_at_ms must be a non-negative integer")
    if not isinstance(doc["payload"], str) or not isinstance(doc["device"], str):
        raise MalformedInput("envelope payload and device must be strings")
    try:
        sig = b64decode(doc["sig"])
        payload = doc["payload"].encode("ascii")
        release = json.loads(payload)
        check_record(release)
    except (UnicodeEncodeError, json.JSONDecodeError, ValueError) as exc:
        raise MalformedInput(f"envelope payload is not a valid release: {exc}") from None
    return Envelope(doc["device"], payload, release, sent, sig)


def signed_message(sent_at_ms: int, payload: bytes) -> bytes:
    return _DOMAIN + str(int(sent_at_ms)).encode("ascii") + b"\n" + payload


def schema() -> dict[str, Any]:
    """The JSON Schema of the envelope (its ``$defs/release`` is the payload)."""
    text = resources.files("edgetwin.sync").joinpath("release.schema.json").read_text("utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc
