"""A recorded-style NMEA track of one person's week in Lyon, for gpsfake, and its truth.

``python -m tests.sources.gps_track`` rewrites ``data/gps_track.nmea``;
``test_gpsd_track_file_is_what_the_generator_writes`` checks the committed file
is exactly this (checksums included). Times are UTC (the tests run with TZ=UTC):

- Mon 2 Nov 2026 18:00 -> Fri 6 Nov 21:00, one RMC sentence every 10 minutes;
- nights at home; Tue, Wed and Thu at a workplace 3.4 km away (Wed lunch at a
  cafe 1.7 km from home), the commute in between;
- Friday a trip to Grenoble (~95 km) and back.

The file starts with :data:`WARMUP` void sentences (a receiver acquiring): gpsd
syncs to a new device on its first bytes, so a test releases those first.

A GPS at rest wanders a few metres, so each place is reported at three nearby
positions; every exact position the track holds is in :func:`exact_positions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

DATA = Path(__file__).parent / "data" / "gps_track.nmea"
START = datetime(2026, 11, 2, 18, 0, tzinfo=UTC)
END = datetime(2026, 11, 6, 21, 0, tzinfo=UTC)
STEP = timedelta(minutes=10)
WARMUP = 40  # void sentences before the first fix

HOME = (45.76012, 4.84193)
WORK = (45.78432, 4.87211)
CAFE = (45.74861, 4.82673)
TRIP = (45.18853, 5.72452)
PLACES = {"home": HOME, "work": WORK, "cafe": CAFE, "trip": TRIP}
# a receiver at rest: a few metres of wander around the true position
_WANDER = ((0.0, 0.0), (0.00007, -0.00005), (-0.00004, 0.00009))


@dataclass(frozen=True)
class Fix:
    t: float
    lat: float  # exactly what the NMEA sentence says, in degrees
    lon: float
    where: str  # home, work, cafe, trip or travel


def where_at(when: datetime) -> str:
    """The person's schedule."""
    day, minutes = when.weekday(), when.hour * 60 + when.minute
    if day in (1, 2, 3):  # Tue, Wed, Thu: work
        if 8 * 60 + 20 <= minutes < 8 * 60 + 50 or 17 * 60 + 30 <= minutes < 18 * 60:
            return "travel"
        if day == 2 and 12 * 60 + 30 <= minutes < 13 * 60 + 20:
            return "cafe"
        if 8 * 60 + 50 <= minutes < 17 * 60 + 30:
            return "work"
    if day == 4:  # Fri: Grenoble
        if 8 * 60 <= minutes < 10 * 60 or 17 * 60 <= minutes < 19 * 60:
            return "travel"
        if 10 * 60 <= minutes < 17 * 60:
            return "trip"
    return "home"


def track() -> list[Fix]:
    out: list[Fix] = []
    when, k, leg = START, 0, 0
    while when <= END:
        where = where_at(when)
        if where == "travel":
            leg += 1
            a, b = (HOME, TRIP) if when.weekday() == 4 else (HOME, WORK)
            f = 0.15 + 0.7 * ((leg * 0.37) % 1.0)  # somewhere along the way
            lat, lon = a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1])
        else:
            dl, do = _WANDER[k % len(_WANDER)]
            lat, lon = PLACES[where][0] + dl, PLACES[where][1] + do
        lat, lon = _nmea_quantized(lat), _nmea_quantized(lon)
        out.append(Fix(when.timestamp(), lat, lon, where))
        when += STEP
        k += 1
    return out


def nmea_text(fixes: list[Fix], *, warmup: int = WARMUP) -> str:
    """The sentences: ``warmup`` void RMCs of a receiver still acquiring (one a second,
    ending a second before the first fix; gpsd syncs to the device on them), then a
    sentence per fix."""
    first = fixes[0].t
    cold = [void_rmc(first - warmup + k) for k in range(warmup)]
    return "".join(line + "\r\n" for line in [*cold, *(rmc(f) for f in fixes)])


def void_rmc(t: float) -> str:
    """An RMC of a receiver without a fix yet (status V)."""
    when = datetime.fromtimestamp(t, UTC)
    body = f"GPRMC,{when:%H%M%S}.00,V,,,,,,,{when:%d%m%y},,,N"
    return f"${body}*{checksum(body):02X}"


def rmc(fix: Fix) -> str:
    """A GPRMC sentence (NMEA 2.3, autonomous fix) with its checksum."""
    when = datetime.fromtimestamp(fix.t, UTC)
    body = (f"GPRMC,{when:%H%M%S}.00,A,{_ddmm(fix.lat, 2)},{'N' if fix.lat >= 0 else 'S'},"
            f"{_ddmm(fix.lon, 3)},{'E' if fix.lon >= 0 else 'W'},0.02,,{when:%d%m%y},,,A")
    return f"${body}*{checksum(body):02X}"


def checksum(body: str) -> int:
    c = 0
    for ch in body.encode("ascii"):
        c ^= ch
    return c


def exact_positions(fixes: list[Fix]) -> set[tuple[float, float]]:
    return {(f.lat, f.lon) for f in fixes}


def nmea_forms(value: float, degree_digits: int) -> str:
    """The ddmm.mmmm text of a coordinate, as in the sentences."""
    return _ddmm(value, degree_digits)


def _ddmm(value: float, degree_digits: int) -> str:
    value = abs(value)
    degrees = int(value)
    minutes = round((value - degrees) * 60.0, 4)
    return f"{degrees:0{degree_digits}d}{minutes:07.4f}"


def _nmea_quantized(value: float) -> float:
    """The degrees an NMEA ddmm.mmmm field can say (gpsd reports exactly this)."""
    sign = -1.0 if value < 0 else 1.0
    value = abs(value)
    degrees = math.floor(value)
    minutes = round((value - degrees) * 60.0, 4)
    return sign * (degrees + minutes / 60.0)


if __name__ == "__main__":
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(nmea_text(track()), encoding="ascii", newline="")
    print(f"wrote {DATA} ({DATA.stat().st_size} bytes)")
