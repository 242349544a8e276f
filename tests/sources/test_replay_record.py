"""A replay pairing record with values of the wrong type is a usage error, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetwin.errors import UsageError
from edgetwin.sources.recording import ReplaySource


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"speed": "fast"}, "speed 'fast' is not a number"),
        ({"speed": float("nan")}, "speed nan is not a number"),
        ({"speed": True}, "speed True is not a number"),
        ({"preset": "2"}, "preset '2' is not a whole number"),
        ({"format": 3}, "format 3 is not text"),
        ({"stream": ["a"]}, "stream \\['a'\\] is not text"),
    ],
)
def test_replay_record_with_a_wrong_type_is_a_usage_error(
    tmp_path: Path, extra: dict[str, object], match: str
) -> None:
    record = {"kind": "replay", "path": str(tmp_path / "r.csv"), **extra}
    with pytest.raises(UsageError, match=match):
        ReplaySource.from_record("rp", record)


def test_replay_record_with_good_values_builds_the_source(tmp_path: Path) -> None:
    source = ReplaySource.from_record(
        "rp", {"kind": "replay", "path": str(tmp_path / "r.csv"), "speed": 2, "loop": True,
               "preset": 0, "format": "csv", "stream": "s"})
    assert (source.speed, source.loop, source.preset, source.fmt, source.stream_name) == (
        2.0, True, 0, "csv", "s")
