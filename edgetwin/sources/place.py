"""Coarse location and on-device places: home, a regular place, elsewhere.

Location is the most identifying thing a twin holds, so a fix is snapped to a
grid of ``precision_m`` before anything else sees it (:class:`Grid`): the cell's
centre is all that is stored, learned from or shown. Cells are
``precision_m`` tall (in latitude) and about as wide (the longitude step widens
with the latitude of the cell's band so a cell stays ~square), so the default
1 km keeps a neighbourhood, never a street.

:class:`PlaceLearner` learns the person's places on the device from their own
coarse history, online (each fix is classified with what was known up to it):

- time between consecutive fixes (at most ``MAX_GAP_S`` apart; a longer gap
  counts for nothing) is spent in the earlier fix's cell, on that moment's
  local day, and counted as night when its local hour is 00:00-06:00;
- **home** is the cell with the most night time over the last ``WINDOW_DAYS``
  days, once that is at least ``HOME_MIN_NIGHT_S``;
- a **regular** place is any other cell where the person spent at least
  ``VISIT_MIN_S`` on at least ``regular_days`` distinct days of the window;
- everything else is **elsewhere**.

``observe`` returns the place code (0 home, 1 regular, 2 elsewhere; NaN until a
home is learned) and the distance in km from the home cell's centre (NaN while
home is unknown). The learner's state (cells as grid indices, seconds per local
day) is a small JSON document the daemon keeps sealed in the store; it never
holds more than the coarse cells. Pure Python: no store, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Protocol

__all__ = [
    "ELSEWHERE",
    "HOME",
    "REGULAR",
    "Grid",
    "Locator",
    "PlaceLearner",
    "haversine_km",
]

HOME, REGULAR, ELSEWHERE = 0, 1, 2
M_PER_DEG_LAT = 111_320.0  # metres per degree of latitude (and of longitude at the equator)
MAX_GAP_S = 900.0  # fixes further apart than this: the time between them is unknown
NIGHT_HOURS = (0, 6)  # local hours [start, end) that count as night
HOME_MIN_NIGHT_S = 3 * 3600.0  # night time in a cell before it can be home
VISIT_MIN_S = 900.0  # time in a cell on one day for that day to count as a visit
# days of history the learner keeps: within the default raw retention (30 days), so the
# learned places never outlive the samples they came from (see ``trim_before``)
WINDOW_DAYS = 28
MAX_CELLS = 256  # cells kept; the least used go first (a long trip passes many)
RECLASSIFY_S = 60.0  # home and regular places are recomputed at most this often (fix time)
STATE_VERSION = 1
_EARTH_RADIUS_KM = 6371.0088


class Locator(Protocol):
    """Where a position falls: a key for its place, and that place's centre."""

    def locate(self, lat: float, lon: float) -> str: ...
    def centre(self, key: str) -> tuple[float, float]: ...


@dataclass(frozen=True)
class Grid:
    """A grid of ~``precision_m`` cells; a position is known only by its cell."""

    precision_m: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.precision_m) and self.precision_m > 0):
            raise ValueError("precision_m must be a positive number of metres")

    @property
    def dlat(self) -> float:
        return self.precision_m / M_PER_DEG_LAT

    def cell(self, lat: float, lon: float) -> tuple[int, int]:
        """Grid indices of a position (latitude band, longitude step within it)."""
        i = math.floor((lat + 90.0) / self.dlat)
        j = math.floor((lon + 180.0) / self._dlon(i))
        return i, j

    def cell_centre(self, i: int, j: int) -> tuple[float, float]:
        lat = min(90.0, max(-90.0, -90.0 + (i + 0.5) * self.dlat))
        lon = min(180.0, max(-180.0, -180.0 + (j + 0.5) * self._dlon(i)))
        return lat, lon

    def snap(self, lat: float, lon: float) -> tuple[float, float]:
        """The centre of the cell holding (lat, lon): all that is kept of a fix."""
        return self.cell_centre(*self.cell(lat, lon))

    def locate(self, lat: float, lon: float) -> str:
        i, j = self.cell(lat, lon)
        return f"{i}:{j}"

    def centre(self, key: str) -> tuple[float, float]:
        i, j = (int(x) for x in key.split(":"))
        return self.cell_centre(i, j)

    def _dlon(self, i: int) -> float:
        band_lat = -90.0 + (i + 0.5) * self.dlat
        cos = max(math.cos(math.radians(min(90.0, max(-90.0, band_lat)))), 1e-3)
        return min(360.0, self.dlat / cos)


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (lat, lon) in km."""
    lat1, lon1, lat2, lon2 = (math.radians(x) for x in (*a, *b))
    h = (math.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2)
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


class PlaceLearner:
    """Learns home and regular places from a stream of (t, lat, lon); see the module doc."""

    def __init__(
        self,
        locator: Locator,
        *,
        regular_days: int = 3,
        tz: tzinfo | None = None,
        state: dict[str, Any] | None = None,
        clock_day: Callable[[float], tuple[int, int]] | None = None,
    ) -> None:
        if regular_days < 1:
            raise ValueError("regular_days must be at least 1")
        self.locator = locator
        self.regular_days = regular_days
        self._tz = tz
        self._day_hour = clock_day or self._local_day_hour
        # cell -> {"d": {day: seconds there}, "n": {day: night seconds there}}
        self._cells: dict[str, dict[str, dict[int, float]]] = {}
        self._prev: tuple[float, str] | None = None
        self._today: int | None = None
        self._home: str | None = None
        self._regular: frozenset[str] = frozenset()
        self._classified_t = -math.inf
        self._dirty = False
        if state:
            self._restore(state)

    # -- public ------------------------------------------------------------------

    @property
    def home(self) -> str | None:
        """The home cell's key, or None while not learned."""
        return self._home

    @property
    def regular(self) -> frozenset[str]:
        return self._regular

    @property
    def changed(self) -> bool:
        """Whether the state moved since the last :meth:`state` call."""
        return self._dirty

    def observe(self, t: float, lat: float, lon: float) -> tuple[float, float]:
        """Learn from one fix; its (place code or NaN, km from home or NaN)."""
        key = self.locator.locate(lat, lon)
        if self._prev is not None:
            prev_t, prev_key = self._prev
            if t <= prev_t:  # out of order or repeated: classify, learn nothing
                return self.classify(key, lat, lon)
            dt = t - prev_t
            if dt <= MAX_GAP_S:
                self._spend(prev_key, prev_t, dt)
        self._prev = (t, key)
        self._dirty = True
        if t - self._classified_t >= RECLASSIFY_S or self._home is None:
            self._reclassify(t)
        return self.classify(key, lat, lon)

    def classify(self, key: str, lat: float, lon: float) -> tuple[float, float]:
        """Place code and distance from home of a position in cell ``key``."""
        if self._home is None:
            return math.nan, math.nan
        dist = haversine_km((lat, lon), self.locator.centre(self._home))
        if key == self._home:
            return float(HOME), dist
        if key in self._regular:
            return float(REGULAR), dist
        return float(ELSEWHERE), dist

    def state(self) -> dict[str, Any]:
        """The learned state as JSON-ready data (coarse cells only)."""
        self._dirty = False
        return {
            "version": STATE_VERSION,
            "prev": list(self._prev) if self._prev is not None else None,
            "cells": {
                key: {part: {str(day): round(s, 1) for day, s in days.items()}
                      for part, days in cell.items()}
                for key, cell in self._cells.items()
            },
        }

    def trim_before(self, t: float | None) -> bool:
        """Drop what was learned from local days before the one holding ``t`` (None: all),
        as the stored location stream lost them (forget, retention); whether anything went."""
        if t is None:
            had = bool(self._cells) or self._prev is not None
            self.reset()
            return had
        first_day, _ = self._day_hour(t)
        dropped = False
        for key in list(self._cells):
            cell = self._cells[key]
            for part in ("d", "n"):
                kept = {d: s for d, s in cell[part].items() if d >= first_day}
                dropped |= len(kept) != len(cell[part])
                cell[part] = kept
            if not cell["d"] and not cell["n"]:
                del self._cells[key]
        if self._prev is not None and self._prev[0] < t:
            self._prev = None
            dropped = True
        if dropped:
            self._dirty = True
            self._reclassify(t)
        return dropped

    def reset(self) -> None:
        """Forget everything learned."""
        self._cells.clear()
        self._prev = None
        self._today = None
        self._home = None
        self._regular = frozenset()
        self._classified_t = -math.inf
        self._dirty = True

    # -- private -------------------------------------------------------------------

    def _local_day_hour(self, t: float) -> tuple[int, int]:
        when = datetime.fromtimestamp(t, self._tz)
        return when.toordinal(), when.hour

    def _spend(self, key: str, t: float, dt: float) -> None:
        day, hour = self._day_hour(t)
        cell = self._cells.setdefault(key, {"d": {}, "n": {}})
        before = cell["d"].get(day, 0.0)
        cell["d"][day] = before + dt
        if NIGHT_HOURS[0] <= hour < NIGHT_HOURS[1]:
            cell["n"][day] = cell["n"].get(day, 0.0) + dt
        if before < VISIT_MIN_S <= before + dt:
            self._classified_t = -math.inf  # a new visit day: a place may have become regular
        if self._today is None or day > self._today:
            self._today = day
            self._prune(day, keep=key)

    def _prune(self, today: int, keep: str) -> None:
        oldest = today - WINDOW_DAYS
        for key in list(self._cells):
            cell = self._cells[key]
            for part in ("d", "n"):
                cell[part] = {d: s for d, s in cell[part].items() if d > oldest}
            if not cell["d"] and not cell["n"] and key != keep:
                del self._cells[key]
        if len(self._cells) > MAX_CELLS:
            ranked = sorted(self._cells, key=lambda k: sum(self._cells[k]["d"].values()))
            for key in ranked[: len(self._cells) - MAX_CELLS]:
                if key != keep:
                    del self._cells[key]

    def _reclassify(self, t: float) -> None:
        self._classified_t = t
        best, best_night = None, 0.0
        for key, cell in self._cells.items():
            night = sum(cell["n"].values())
            if night > best_night:
                best, best_night = key, night
        self._home = best if best_night >= HOME_MIN_NIGHT_S else None
        self._regular = frozenset(
            key for key, cell in self._cells.items()
            if key != self._home
            and sum(1 for s in cell["d"].values() if s >= VISIT_MIN_S) >= self.regular_days
        )

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"place state version {state.get('version')!r} is not "
                             f"{STATE_VERSION}")
        cells = state.get("cells")
        if not isinstance(cells, dict):
            raise ValueError("place state has no cells table")
        for key, cell in cells.items():
            self.locator.centre(str(key))  # a key this locator cannot read is refused here
            self._cells[str(key)] = {
                part: {int(day): float(s) for day, s in dict(cell.get(part, {})).items()}
                for part in ("d", "n")
            }
        prev = state.get("prev")
        if prev is not None:
            self._prev = (float(prev[0]), str(prev[1]))
        days = [d for cell in self._cells.values() for d in cell["d"]]
        self._today = max(days) if days else None
        self._reclassify(self._prev[0] if self._prev else 0.0)
        self._dirty = False
