"""The reference collector: signatures, enrollment, replays, storage, aggregates."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from edgetwin.cli.main import cli
from edgetwin.sync.collector import Collector, CollectorRefusal
from edgetwin.sync.payload import decode_envelope, encode_envelope, schema
from edgetwin.sync.signing import DeviceKey
from tests.sync.helpers import make_release


def _now_ms() -> int:
    return int(time.time() * 1000)


def test_envelope_matches_the_json_schema(device_key: DeviceKey) -> None:
    body = encode_envelope(make_release(), device_key, _now_ms())
    doc = json.loads(body)
    s = schema()
    jsonschema.Draft202012Validator.check_schema(s)
    jsonschema.validate(doc, s)
    jsonschema.validate(json.loads(doc["payload"]), s["$defs"]["release"])
    assert len(body) < 1024


def test_stores_once_and_refuses_every_bad_upload_garbage_included(
    tmp_path: Path, device_key: DeviceKey
) -> None:
    c = Collector(tmp_path / "c.db", window_s=60)
    c.enroll(device_key.public_b64)
    release = make_release(70.0)
    body = encode_envelope(release, device_key, _now_ms())
    assert c.accept(body, "http").status == "stored"
    # A retry (new send time, same idempotency key) and a verbatim replay count once.
    assert c.accept(encode_envelope(release, device_key, _now_ms()), "http").status == "duplicate"
    assert c.accept(body, "http").status == "duplicate"
    assert c.release_ids() == [release.id]

    stranger = DeviceKey.generate()
    doc = json.loads(encode_envelope(make_release(), device_key, _now_ms()))
    payload = json.loads(doc["payload"])
    payload["value"] = 71.0  # tampered in transit
    doc["payload"] = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    doc2 = json.loads(encode_envelope(make_release(), device_key, _now_ms()))
    doc2["extra"] = "raw samples"
    # A list of (name, expected status, body): two cases share 400, so no dict keyed by status.
    cases = [
        ("unenrolled device", 403, encode_envelope(make_release(), stranger, _now_ms())),
        ("stale send time", 422, encode_envelope(make_release(), device_key,
                                                 _now_ms() - 3_600_000)),
        ("garbage bytes", 400, b"\x00garbage{"),
        ("tampered payload", 401, json.dumps(doc).encode()),
        ("extra field", 400, json.dumps(doc2).encode()),
    ]
    for name, status, bad in cases:
        with pytest.raises(CollectorRefusal) as err:
            c.accept(bad, "http")
        assert err.value.http_status == status, (name, err.value.message)
    counts = c.counts()
    assert counts["releases"] == 1 and counts["duplicates"] == 2
    assert counts["refused"] == len(cases) == 5  # every case ran, the garbage one too
    c.close()


def test_an_id_taken_by_another_device_is_refused(tmp_path: Path) -> None:
    a, b = DeviceKey.generate(), DeviceKey.generate()
    c = Collector(tmp_path / "c.db")
    c.enroll(a.public_b64)
    c.enroll(b.public_b64)
    release = make_release()
    c.accept(encode_envelope(release, a, _now_ms()), "http")
    with pytest.raises(CollectorRefusal) as err:
        c.accept(encode_envelope(release, b, _now_ms()), "http")
    assert err.value.http_status == 409
    c.close()


def test_decode_reports_what_is_wrong() -> None:
    with pytest.raises(Exception, match="not JSON"):
        decode_envelope(b"nope")
    with pytest.raises(Exception, match="exceeds"):
        decode_envelope(b" " * 20_000)


def test_aggregates_and_cli(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    keys = [DeviceKey.generate() for _ in range(30)]
    runner = CliRunner()
    result = runner.invoke(cli, ["collector", "--db", str(db), "--enroll", keys[0].public_b64,
                                 "--enroll", keys[1].public_b64])
    assert result.exit_code == 0, result.output
    assert result.output.count("enrolled device") == 2
    c = Collector(db)
    for k in keys[2:]:
        c.enroll(k.public_b64)
    for k in keys:
        c.accept(encode_envelope(make_release(75.0), k, _now_ms()), "http")
    c.close()
    result = runner.invoke(cli, ["--json", "collector", "--db", str(db), "--aggregate"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    (row,) = doc["aggregates"]
    assert row["metric"] == "hr_mean" and row["devices"] == 30 and row["releases"] == 30
    # 30 releases at scale 120: noise SE = sqrt(30 * 2 * 120²) / 30 ≈ 31 bpm.
    assert row["noise_se"] == pytest.approx(120 * (2 / 30) ** 0.5)
    assert row["ci95"] == pytest.approx([row["mean"] - 1.96 * row["noise_se"],
                                         row["mean"] + 1.96 * row["noise_se"]])
    text = runner.invoke(cli, ["collector", "--db", str(db), "--aggregate"]).output
    assert "hr_mean" in text and "30" in text


def test_enroll_rejects_a_bad_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["collector", "--db", str(tmp_path / "c.db"),
                                      "--enroll", "not-a-key"])
    assert result.exit_code == 2
    assert "cannot enroll" in result.output
