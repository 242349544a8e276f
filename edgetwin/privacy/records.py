"""The slice of the twin store API that privacy and sync use (see TwinStore)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from edgetwin.types import FeatureFrame

if TYPE_CHECKING:
    from edgetwin.store.codec import FrameColumns


class RecordStore(Protocol):
    """Encrypted small records, atomic groups of writes, and the audit chain."""

    def put_record(self, kind: str, key: str, value: dict[str, Any]) -> None: ...
    def get_record(self, kind: str, key: str) -> dict[str, Any] | None: ...
    def list_records(self, kind: str) -> dict[str, dict[str, Any]]: ...
    def delete_record(self, kind: str, key: str) -> bool: ...
    def transaction(self) -> AbstractContextManager[None]: ...
    def audit(self, event: str, **details: Any) -> None: ...


class TimelineStore(RecordStore, Protocol):
    """A record store that also serves the feature timeline."""

    def read_frames(
        self, t0: float | None = None, t1: float | None = None
    ) -> Iterator[FeatureFrame]: ...
    def iter_frame_columns(
        self, t0: float | None = None, t1: float | None = None
    ) -> Iterator[FrameColumns]: ...
