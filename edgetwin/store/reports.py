"""Value types the store hands out: stream summaries, verification and forget reports."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StreamInfo:
    """What the twin holds of one stream; ``first_t``/``last_t`` are None when empty."""

    name: str
    channels: tuple[str, ...]
    units: tuple[str, ...]
    samples: int
    first_t: float | None
    last_t: float | None
    meta: dict[str, Any] = field(default_factory=dict)
    chunks: int = 0

    def to_json(self) -> dict[str, Any]:
        """The ``status`` JSON object of a stream (DESIGN.md keys plus more)."""
        return {
            "name": self.name,
            "samples": self.samples,
            "first_t": self.first_t,
            "last_t": self.last_t,
            "channels": list(self.channels),
            "units": list(self.units),
            "chunks": self.chunks,
        }


@dataclass(frozen=True)
class Problem:
    """One piece of damage found by :meth:`TwinStore.verify`."""

    area: str  # database | keystore | keys | series | chunk | record | audit
    detail: str
    stream: str | None = None
    t0: float | None = None
    t1: float | None = None

    def __str__(self) -> str:
        where = f"stream {self.stream!r}" if self.stream else self.area
        if self.t0 is not None and self.t1 is not None:
            where += f" {fmt_time(self.t0)} .. {fmt_time(self.t1)}"
        return f"{where}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "stream": self.stream,
            "t0": self.t0,
            "t1": self.t1,
            "detail": self.detail,
        }


@dataclass
class VerifyReport:
    """Everything :meth:`TwinStore.verify` checked and every problem it found."""

    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def count(self, what: str, n: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + n

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": dict(self.checked),
            "problems": [p.to_json() for p in self.problems],
        }


@dataclass
class ForgetReport:
    """What a forget or a retention pass destroyed."""

    keys_destroyed: int = 0
    chunks_deleted: int = 0
    samples_deleted: int = 0
    frames_deleted: int = 0
    predictions_deleted: int = 0
    records_deleted: int = 0
    chunks_reencrypted: int = 0
    # frames that lost values fed by the forgotten data (those left empty are deleted)
    frames_shredded: int = 0
    streams_removed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.keys_destroyed or self.chunks_deleted or self.records_deleted)

    def merge(self, other: ForgetReport) -> None:
        self.keys_destroyed += other.keys_destroyed
        self.chunks_deleted += other.chunks_deleted
        self.samples_deleted += other.samples_deleted
        self.frames_deleted += other.frames_deleted
        self.predictions_deleted += other.predictions_deleted
        self.records_deleted += other.records_deleted
        self.chunks_reencrypted += other.chunks_reencrypted
        self.frames_shredded += other.frames_shredded
        self.streams_removed.extend(other.streams_removed)

    def to_json(self) -> dict[str, Any]:
        return {
            "keys_destroyed": self.keys_destroyed,
            "chunks_deleted": self.chunks_deleted,
            "samples_deleted": self.samples_deleted,
            "frames_deleted": self.frames_deleted,
            "predictions_deleted": self.predictions_deleted,
            "records_deleted": self.records_deleted,
            "chunks_reencrypted": self.chunks_reencrypted,
            "frames_shredded": self.frames_shredded,
            "streams_removed": list(self.streams_removed),
        }


@dataclass
class RoomReport:
    """What a pass keeping room on the twin's disk found and destroyed."""

    min_free_bytes: int
    free_before: int  # free on the disk plus the pages twin.db holds free for reuse
    free_after: int
    days: list[str] = field(default_factory=list)  # raw-sample days destroyed, oldest first
    # still under the floor with only the protected days of raw samples left
    short: bool = False
    forgot: ForgetReport = field(default_factory=ForgetReport)

    def to_json(self) -> dict[str, Any]:
        return {
            "min_free_mib": round(self.min_free_bytes / 2**20, 1),
            "free_mib_before": round(self.free_before / 2**20, 1),
            "free_mib_after": round(self.free_after / 2**20, 1),
            "days": list(self.days),
            "short": self.short,
            "forgot": self.forgot.to_json(),
        }


def fmt_time(t: float) -> str:
    """UTC ``YYYY-MM-DD HH:MM:SSZ`` for messages."""
    if not math.isfinite(t):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))
