"""Stored predictions keep their numbers as base64 float64 text (a day's refit parsed ~5 s of
JSON numbers before): every field comes back exactly, chunks of the earlier form (the
DESIGN.md objects) still read, ``explained=False`` skips only what scoring never reads,
and a damaged chunk is undecodable with a reason, not a crash."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import struct
import zlib
from pathlib import Path

import pytest

from edgetwin.store import Secret, TwinStore, codec
from edgetwin.types import Prediction
from tests.store.helpers import PASS, T0


def _full(t: float = T0, seed: int = 0) -> Prediction:
    rng = random.Random(seed)
    h = tuple(70 + rng.gauss(0, 3) for _ in range(12))
    attention = tuple(rng.random() for _ in range(60))
    total = sum(attention)
    return Prediction(
        t=t,
        target="hr",
        step_s=5.0,
        horizon=(math.nan, -0.0, math.inf, *h[3:]),
        band=tuple((x - 4.0, x + 4.0) for x in h),
        attention=tuple(a / total for a in attention),
        imputed=((t - 60.0, t - 55.0), (t - 20.0, t - 10.0)),
        model="lstm-attn/int8/ab12cd34+personal",
        anomaly=True,
        sources=("personal",) * 6 + ("persistence",) * 6,
        alternatives=(("global", h), ("persistence", (71.5,) * 12)),
        influence=tuple(reversed(attention)),
    )


def _bits(values: tuple[float, ...]) -> list[bytes]:
    return [struct.pack("<d", v) for v in values]


def _same(a: Prediction, b: Prediction) -> bool:
    """Equal field by field, floats bit for bit (NaN == NaN, -0.0 != 0.0)."""
    for name in ("t", "target", "step_s", "model", "anomaly", "sources"):
        if getattr(a, name) != getattr(b, name):
            return False
    pairs = [(a.horizon, b.horizon), (a.attention, b.attention), (a.influence, b.influence),
             (tuple(x for p in a.band for x in p), tuple(x for p in b.band for x in p)),
             (tuple(x for s in a.imputed for x in s), tuple(x for s in b.imputed for x in s))]
    if [n for n, _ in a.alternatives] != [n for n, _ in b.alternatives]:
        return False
    pairs += [(va, vb) for (_, va), (_, vb) in zip(a.alternatives, b.alternatives, strict=True)]
    return all(_bits(x) == _bits(y) for x, y in pairs)


def test_every_field_comes_back_bit_for_bit() -> None:
    preds = [_full(T0 + 5 * k, seed=k) for k in range(5)]
    preds.append(Prediction(T0 + 30, "spo2", 5.0, (97.0,), ((95.0, 99.0),), (), (), ""))
    got = codec.decode_predictions(codec.encode_predictions(preds))
    assert len(got) == len(preds)
    assert all(_same(a, b) for a, b in zip(preds, got, strict=True))
    assert got[-1] == preds[-1]  # no optional field invented


def test_numbers_are_stored_as_text_not_json_numbers() -> None:
    stored = json.loads(zlib.decompress(codec.encode_predictions([_full()])))[0]
    assert {k: type(stored[k]).__name__ for k in ("h", "band", "attn", "infl")} == {
        "h": "str", "band": "str", "attn": "str", "infl": "str"}
    assert all(isinstance(v, str) for v in stored["alt"].values())


def test_chunks_of_the_earlier_form_still_decode() -> None:
    preds = [_full(T0 + 5 * k, seed=k) for k in range(3)]
    # what encode_predictions wrote before 2026-12-04 (NaN and inf as JSON's extensions)
    legacy = codec.encode_json([p.to_json() for p in preds])
    got = codec.decode_predictions(legacy)
    assert all(_same(a, b) for a, b in zip(preds, got, strict=True))


def test_unexplained_reads_skip_only_what_scoring_never_reads() -> None:
    p = _full()
    got = codec.decode_predictions(codec.encode_predictions([p]), explained=False)[0]
    assert (got.attention, got.influence, got.imputed) == ((), (), ())
    stripped = dataclasses.replace(p, attention=(), influence=(), imputed=())
    assert _same(got, stripped)


def test_the_new_form_is_no_larger_than_the_old_on_model_output() -> None:
    preds = [_full(T0 + 5 * k, seed=k) for k in range(256)]
    new = len(codec.encode_predictions(preds))
    old = len(codec.encode_json([p.to_json() for p in preds]))
    assert new <= old


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda o: o.update(h="AAAA"), "not a multiple of 8"),
        (lambda o: o.update(attn="!!!!"), "prediction chunk"),
        (lambda o: o.update(band=[1.0, 2.0]), "not 'list'"),
        (lambda o: o.update(imp=codec._f8_text([1.0, 2.0, 3.0])), "odd count"),
        (lambda o: o.update(alt=["global"]), "not a mapping"),
        (lambda o: o.pop("t"), "'t'"),
    ],
)
def test_a_damaged_prediction_is_undecodable_with_a_reason(change, reason: str) -> None:
    obj = json.loads(zlib.decompress(codec.encode_predictions([_full()])))[0]
    change(obj)
    with pytest.raises(codec.Undecodable, match=reason):
        codec.decode_predictions(codec.encode_json([obj]))


def test_a_twin_with_both_forms_reads_them_in_order(tmp_path: Path, monkeypatch) -> None:
    old = [_full(T0 + 5 * k, seed=k) for k in range(4)]
    new = [_full(T0 + 20 + 5 * k, seed=10 + k) for k in range(4)]
    with TwinStore.create(tmp_path / "twin", Secret.passphrase(PASS)) as store:
        with monkeypatch.context() as m:
            m.setattr(codec, "encode_predictions",
                      lambda preds: codec.encode_json([p.to_json() for p in preds]))
            store.append_predictions(old)
            store.commit()
        store.append_predictions(new)
        store.commit()
    with TwinStore.open(tmp_path / "twin", Secret.passphrase(PASS)) as store:
        got = list(store.iter_predictions())
        lean = list(store.iter_predictions(explained=False))
        assert store.verify().ok
    assert len(got) == 8 and all(_same(a, b) for a, b in zip(old + new, got, strict=True))
    assert [_bits(p.horizon) for p in lean] == [_bits(p.horizon) for p in got]
    assert all(p.attention == () for p in lean)
