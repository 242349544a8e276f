"""Where releases go: one HTTPS collector or one MQTT broker topic.

The target is an encrypted store record ``("sync", "target")``, not a line in
config.toml: it names the study or clinic the person shares with, which is as
personal as a paired device's address, and ``sync configure`` changes it
atomically with its audit entry.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgetwin.errors import UsageError
from edgetwin.privacy.records import RecordStore

KIND = "sync"
KEY = "target"
_SCHEMES = {"https": 443, "http": 80, "mqtts": 8883, "mqtt": 1883}


@dataclass(frozen=True)
class SyncTarget:
    """A validated uplink target."""

    kind: str  # "https" | "mqtt"
    url: str
    host: str
    port: int
    path: str  # HTTP path; "" for MQTT
    tls: bool
    topic: str | None = None
    ca_file: str | None = None
    allow_insecure_loopback: bool = False

    def describe(self) -> str:
        """One line for status and audit (no secrets: URLs carry no credentials here)."""
        where = f"{self.url} topic {self.topic}" if self.kind == "mqtt" else self.url
        return where + (f" (CA {self.ca_file})" if self.ca_file else "")

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def parse_target(
    *,
    url: str | None = None,
    mqtt: str | None = None,
    topic: str | None = None,
    ca_file: Path | str | None = None,
    allow_insecure_loopback: bool = False,
) -> SyncTarget:
    """Validate a target; UsageError says exactly what is wrong and what to do."""
    if (url is None) == (mqtt is None):
        raise UsageError("give exactly one of --url URL or --mqtt URL --topic TOPIC")
    raw = url if url is not None else mqtt
    assert raw is not None
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if url is not None else ("mqtts", "mqtt")
    if scheme not in allowed:
        raise UsageError(f"{raw!r}: scheme must be {' or '.join(allowed)}")
    if parts.username or parts.password:
        raise UsageError(f"{raw!r}: credentials in the URL are not supported")
    host = parts.hostname
    if not host:
        raise UsageError(f"{raw!r}: no host")
    try:
        port = parts.port or _SCHEMES[scheme]
    except ValueError as exc:
        raise UsageError(f"{raw!r}: bad port: {exc}") from None
    tls = scheme in ("https", "mqtts")
    if not tls:
        if not is_loopback(host):
            raise UsageError(
                f"{raw!r}: plain {scheme}:// would send releases unencrypted over the network",
                hint=f"use {scheme}s:// (with --ca FILE for a private CA)",
            )
        if not allow_insecure_loopback:
            raise UsageError(
                f"{raw!r}: plain {scheme}:// is allowed only to loopback and only when asked",
                hint="add --allow-insecure-loopback (for local tests), or use TLS",
            )
    if mqtt is not None:
        if not topic or any(c in topic for c in "#+\0"):
            raise UsageError("--mqtt needs --topic TOPIC without wildcards (# or +)")
    elif topic is not None:
        raise UsageError("--topic goes with --mqtt, not --url")
    ca = None
    if ca_file is not None:
        ca_path = Path(ca_file).expanduser().absolute()
        if not ca_path.is_file():
            raise UsageError(f"CA file {ca_path} does not exist")
        if not tls:
            raise UsageError("--ca needs a TLS URL (https:// or mqtts://)")
        ca = str(ca_path)
    return SyncTarget(
        kind="https" if url is not None else "mqtt",
        url=raw,
        host=host,
        port=port,
        path=(parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if url is not None else "",
        tls=tls,
        topic=topic,
        ca_file=ca,
        allow_insecure_loopback=allow_insecure_loopback,
    )


def save_target(store: RecordStore, target: SyncTarget) -> None:
    """Store the target with its audit entry."""
    with store.transaction():
        store.put_record(KIND, KEY, target.to_record())
        store.audit("sync.configure", target=target.describe())


def load_target(store: RecordStore) -> SyncTarget | None:
    """The configured target, re-validated, or None."""
    record = store.get_record(KIND, KEY)
    if record is None:
        return None
    if record["kind"] == "mqtt":
        return parse_target(mqtt=record["url"], topic=record["topic"], ca_file=record["ca_file"],
                            allow_insecure_loopback=record["allow_insecure_loopback"])
    return parse_target(url=record["url"], ca_file=record["ca_file"],
                        allow_insecure_loopback=record["allow_insecure_loopback"])


def require_target(store: RecordStore) -> SyncTarget:
    target = load_target(store)
    if target is None:
        raise UsageError(
            "no sync target configured",
            hint="run 'edgetwin sync configure --url https://...' "
            "or '... --mqtt mqtts://... --topic T'",
        )
    return target


def is_loopback(host: str) -> bool:
    """Literal loopback addresses and the name ``localhost`` (RFC 6761)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
