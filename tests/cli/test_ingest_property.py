"""Property: ``edgetwin ingest`` of any bytes exits 0, 2 or 4 with at most one line on stderr,
changes nothing when it refuses, and leaves a twin that ``edgetwin verify`` passes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

T0 = b"1767225600"

# Bytes that look like our CSV often enough to get past the header: real column names,
# numbers, separators, quotes, and bytes that are not UTF-8.
_TOKENS = st.sampled_from([
    b"timestamp", b"hr", b"rr", b"spo2", b"eeg_fz", b"hr [bpm]", b"temp (degF)", b"hr,hr",
    T0, b"1767225601.5", b"-1", b"1e308", b"1e999", b"nan", b"inf", b"32503680000", b"",
    b",", b",", b"\n", b"\n", b"\r\n", b"\t", b'"', b"\xe9", b"\xff\xfe", b"\x00", b"\xef\xbb\xbf",
])
_CSVISH = st.lists(_TOKENS, max_size=40).map(b"".join)
_DATA = st.one_of(
    st.binary(max_size=200),
    _CSVISH,
    st.tuples(_CSVISH, st.binary(max_size=60)).map(lambda p: b"timestamp,hr\n" + p[0] + p[1]),
)


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=_DATA)
def test_ingest_of_arbitrary_bytes_exits_0_2_or_4_in_one_line_and_the_twin_verifies(
    run_cli: Any, home: Path, tmp_path: Path, data: bytes
) -> None:
    if not (home / "config.toml").exists():
        assert run_cli("init").exit_code == 0
    before = json.loads(run_cli("status", "--json").output)["store"]["streams"]
    path = tmp_path / "input.csv"
    path.write_bytes(data)
    result = run_cli("ingest", str(path), "--stream", "fuzz")
    assert result.exit_code in (0, 2, 4), (data, result.output)
    if result.exit_code:
        assert len(result.stderr.strip().splitlines()) == 1, (data, result.stderr)
        assert "Traceback" not in result.output
        after = json.loads(run_cli("status", "--json").output)["store"]["streams"]
        assert after == before, data
    verify = run_cli("verify")
    assert verify.exit_code == 0, verify.output
