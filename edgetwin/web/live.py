"""Live updates for open dashboards: one bounded queue per server-sent-events client.

The daemon publishes what it already has on the loop (status documents, new frames and
forecasts); nothing here reads the store. A slow client loses its oldest events, never
holds the daemon up.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

QUEUE_EVENTS = 64


class LiveHub:
    """Fan-out of named JSON events to the connected clients."""

    def __init__(self) -> None:
        self._clients: set[asyncio.Queue[bytes]] = set()
        self.sent_events = 0
        self.sent_bytes = 0
        self.dropped = 0

    @property
    def clients(self) -> int:
        return len(self._clients)

    def subscribe(self) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_EVENTS)
        self._clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes]) -> None:
        self._clients.discard(queue)

    def publish(self, event: str, data: Any) -> None:
        """Send ``data`` as event ``event`` to every client (call on the loop)."""
        if not self._clients:
            return
        payload = f"event: {event}\ndata: {json_text(data)}\n\n".encode()
        for queue in self._clients:
            if queue.full():  # drop the oldest: the newest status is what matters
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(payload)
            self.sent_events += 1
            self.sent_bytes += len(payload)

    def close(self) -> None:
        """Tell every client the stream ends."""
        for queue in self._clients:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(b"")


def json_text(data: Any) -> str:
    """``data`` as JSON, NaN and infinities as null (browsers reject NaN in JSON)."""
    try:
        return json.dumps(data, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_finite(data), allow_nan=False, separators=(",", ":"))


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else None  # noqa: PLR0124 - NaN test
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x
