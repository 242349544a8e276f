"""The reference collector: receives signed DP releases over HTTP(S) and/or MQTT.

It verifies each envelope against enrolled device keys, rejects replays (a
release id is stored once; a send time outside ``window_s`` is refused), keeps
releases in SQLite (one machine) or PostgreSQL (several collector processes
sharing one database) and aggregates them per metric across devices. It is
small on purpose: a study can run it as is, or read it as the specification of
what a collector must check.

Modules: this one verifies and decides (shared by both front ends); ``store``
keeps; ``server`` is the HTTP(S) front end (aiohttp, imported only when serving);
``mqtt`` subscribes to a broker; ``edgetwin.untrusted_json`` refuses hostile JSON before parsing.

HTTP answers: 200 ``{"status": "stored"|"duplicate", "id"}``; 400 malformed;
401 bad signature (or a missing/wrong bearer token on ``/v1/aggregates``); 403
device not enrolled; 408 no request or body in time; 409 id taken by another
device; 413 too large; 422 send time outside the window; 503 at the connection
limit with every connection busy.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetwin.errors import MalformedInput, UsageError
from edgetwin.sync.collector.mqtt import CollectorMqtt
from edgetwin.sync.collector.store import Store, open_store
from edgetwin.sync.payload import MAX_ENVELOPE_BYTES, decode_envelope
from edgetwin.sync.signing import b64decode, key_id, public_key_from_b64
from edgetwin.untrusted_json import UntrustedJsonError, check_limits

__all__ = ["Collector", "CollectorMqtt", "CollectorRefusal", "Receipt"]

_LOGGER = logging.getLogger(__name__)
_MAX_DEPTH = 32  # a release nests 3 levels; an envelope 2


class CollectorRefusal(MalformedInput):
    """An upload the collector will not store; ``http_status`` is its answer."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass(frozen=True)
class Receipt:
    status: str  # "stored" | "duplicate"
    id: str

    def to_json(self) -> dict[str, str]:
        return {"status": self.status, "id": self.id}


class Collector:
    """Verification, replay protection and storage, shared by the HTTP and MQTT front ends.

    ``db`` is a SQLite file path or a ``postgresql://`` URL. Every method blocks
    (the HTTP front end calls them from worker threads) and is thread-safe.
    """

    def __init__(
        self,
        db: Path | str,
        *,
        window_s: float = 300.0,
        tap: Callable[[bytes, str], None] | None = None,
        clock: Callable[[], float] = time.time,
        durable: bool = True,
    ) -> None:
        self.db_path = db
        self.window_s = window_s
        self._tap = tap
        self._clock = clock
        self._store: Store = open_store(db, durable=durable)

    @property
    def where(self) -> str:
        """The database, password removed."""
        return self._store.where

    def close(self) -> None:
        self._store.close()

    def enroll(self, public_b64: str, label: str | None = None) -> str:
        """Accept uploads signed by this device key; returns its key id."""
        try:
            public_key_from_b64(public_b64)
        except ValueError as exc:
            raise UsageError(f"cannot enroll {public_b64!r}: {exc}",
                             hint="paste the output of 'edgetwin sync device-key'") from None
        kid = key_id(b64decode(public_b64))
        self._store.enroll(public_b64, kid, label, self._clock())
        return kid

    def accept(self, body: bytes, transport: str) -> Receipt:
        """Verify and store one envelope; CollectorRefusal says why not."""
        if self._tap is not None:
            self._tap(body, transport)
        try:
            receipt = self._accept(body, transport)
        except CollectorRefusal as exc:
            self.record_refusal(transport, exc.http_status, exc.message)
            raise
        if receipt.status == "duplicate":
            self._event(transport, "duplicate", receipt.id)
        return receipt

    def record_refusal(self, transport: str, http_status: int, detail: str) -> None:
        """Count a refusal decided by a front end (timeouts, limits, authentication)."""
        self._event(transport, f"refused {http_status}", detail)

    def aggregates(self) -> list[dict[str, Any]]:
        """Per metric and period window: devices, mean of noisy values and its noise error.

        Each release carries Laplace(scale) noise of variance 2*scale²; the mean of
        n releases has noise standard error sqrt(sum 2*scale²)/n, reported with a
        95 % interval (the noise dominates the spread at small n).
        """
        out = []
        for (metric, unit, period, start, n, devices, mean, var_sum, eps, lo,
             hi) in self._store.aggregate_rows():
            se = math.sqrt(var_sum) / n
            out.append({
                "metric": metric, "unit": unit, "period": period, "period_start": start,
                "releases": n, "devices": devices, "mean": mean, "noise_se": se,
                "ci95": [mean - 1.96 * se, mean + 1.96 * se], "epsilon": eps,
                "bounds": [lo, hi],
            })
        return out

    def counts(self) -> dict[str, int]:
        """Stored releases, distinct devices and ids, and refused/duplicate events."""
        releases, devices, enrolled, events = self._store.counts()
        refused = sum(v for k, v in events.items() if k.startswith("refused"))
        return {"releases": releases, "devices": devices, "enrolled": enrolled,
                "duplicates": events.get("duplicate", 0), "refused": refused}

    def refusals(self) -> dict[str, int]:
        """Refused uploads and connections per HTTP status, e.g. ``{"refused 400": 2}``."""
        return {k: v for k, v in self._store.counts()[3].items() if k.startswith("refused")}

    def release_ids(self) -> list[str]:
        return self._store.release_ids()

    # -- private ---------------------------------------------------------------

    def _accept(self, body: bytes, transport: str) -> Receipt:
        if len(body) > MAX_ENVELOPE_BYTES:
            raise CollectorRefusal(413, f"envelope of {len(body)} bytes exceeds "
                                        f"{MAX_ENVELOPE_BYTES}")
        try:
            _check_limits(body)
            env = decode_envelope(body)
        except (UntrustedJsonError, MalformedInput) as exc:
            raise CollectorRefusal(400, str(exc)) from None
        except (ValueError, RecursionError) as exc:
            # Not expected past the limits above; still a bad upload, never a crash.
            raise CollectorRefusal(400, f"envelope cannot be parsed: {exc!s:.200}") from None
        if not self._store.is_enrolled(env.device):
            raise CollectorRefusal(403, f"device {env.device[:12]}.. is not enrolled")
        try:
            env.verify(env.device)
        except MalformedInput as exc:
            raise CollectorRefusal(401, exc.message) from None
        now = self._clock()
        if abs(env.sent_at_ms / 1000.0 - now) > self.window_s:
            raise CollectorRefusal(
                422, f"send time {env.sent_at_ms} ms is outside the collector's "
                f"{self.window_s:.0f} s window (replayed, or the device clock is off)")
        r = env.release
        owner = self._store.insert_release(
            (r["id"], env.device, r["metric"], r["unit"], r["period"], r["period_start"],
             r["value"], r["epsilon"], r["scale"], r["lower"], r["upper"], r["created"],
             now, transport, env.payload.decode("ascii")))
        if owner is None:
            return Receipt("stored", r["id"])
        if owner != env.device:
            raise CollectorRefusal(409, f"release id {r['id']} belongs to another device")
        return Receipt("duplicate", r["id"])

    def _event(self, transport: str, outcome: str, detail: str) -> None:
        self._store.event(self._clock(), transport, outcome, detail[:500])


def _check_limits(body: bytes) -> None:
    """Depth and number limits on the envelope and on the release JSON inside it."""
    check_limits(body, max_depth=_MAX_DEPTH)
    try:
        doc = json.loads(body)
    except ValueError:
        return  # decode_envelope names what is wrong
    payload = doc.get("payload") if isinstance(doc, dict) else None
    if isinstance(payload, str):
        check_limits(payload.encode("utf-8", "replace"), max_depth=_MAX_DEPTH)
