"""The predictions table and the plain-words explanation (occlusion influence, what was served)."""

from __future__ import annotations

from edgetwin.inference.render import UNEXPLAINED, explain, render_predictions, sparkline
from edgetwin.types import Prediction


def _pred(
    influence: list[float], *, imputed=(), anomaly=False, target="hr", attention=None, sources=()
) -> Prediction:
    horizon = tuple(70.0 + k * 0.5 for k in range(12))
    return Prediction(
        t=1_700_000_000.0,
        target=target,
        step_s=5.0,
        horizon=horizon,
        band=tuple((h - 5.0, h + 6.0) for h in horizon),
        attention=tuple(attention if attention is not None else [1 / 60] * 60),
        imputed=tuple(imputed),
        model="lstm-attn/int8/abcd1234",
        anomaly=anomaly,
        sources=tuple(sources),
        influence=tuple(influence),
    )


def _norm(w: list[float]) -> list[float]:
    s = sum(w)
    return [x / s for x in w]


def test_recent_influence_is_explained_as_the_last_seconds() -> None:
    att = _norm([0.5] * 52 + [5.0] * 8)  # the last 8 steps (40 s) hold 61 % of the weight
    text = explain(_pred(att))
    assert text.startswith("driven mostly by the last 40 s")
    assert "% of the masking effect" in text


def test_attention_alone_is_not_offered_as_an_explanation() -> None:
    """Attention failed the faithfulness check: without occlusion influence, no drivers."""
    att = _norm([0.5] * 52 + [5.0] * 8)
    text = explain(_pred([], attention=att))
    assert "driven" not in text and "attention" not in text
    assert text == UNEXPLAINED
    assert "not measured" in text  # says why, instead of a bare "model forecast"


def test_fallback_to_persistence_is_said() -> None:
    sources = ["persistence"] * 3 + ["global"] * 9
    text = explain(_pred([1 / 60] * 60, sources=sources))
    assert text.startswith("serving the last value carried forward at +5 s…+15 s")
    assert "has not beaten persistence" in text
    every = explain(_pred([1 / 60] * 60, sources=["persistence"] * 12))
    assert "at every step" in every
    assert explain(_pred([1 / 60] * 60, sources=["personal"] * 12)).startswith(
        "corrected for you"
    )


def test_influence_on_an_earlier_stretch_names_how_long_ago() -> None:
    att = _norm([0.05] * 15 + [3.0] * 15 + [0.05] * 30)  # steps 15..29 of 60: 2.5-3.75 min ago
    text = explain(_pred(att))
    assert "ago" in text and "min" in text, text


def test_flat_influence_is_spread() -> None:
    assert explain(_pred([1 / 60] * 60)).startswith("spread over the whole 5 min context")


def test_imputed_span_and_anomaly_are_mentioned() -> None:
    p = _pred([1 / 60] * 60, imputed=[(1_699_999_800.0, 1_699_999_830.0)], anomaly=True)
    text = explain(p)
    assert "35 s of it imputed" in text
    assert "left the band" in text


def test_sparkline_scales_and_resamples() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert len(sparkline(list(range(60)), 10)) == 10
    assert sparkline([5, 5, 5]) == "▄▄▄"
    assert sparkline([]) == ""


def test_table_has_one_row_per_forecast_and_fits_the_width() -> None:
    preds = [_pred(_norm([0.1] * 52 + [3.0] * 8)), _pred([1 / 60] * 60, target="rmssd")]
    for width in (80, 100, 140):
        out = render_predictions(preds, width)
        lines = out.splitlines()
        assert lines[0].startswith("time")
        assert any(" hr bpm" in ln for ln in lines) and any("rmssd ms" in ln for ln in lines)
        assert "70.0" in out and "75.5" in out and "[70.5, 81.5]" in out
        assert all(len(ln) <= width for ln in lines), [len(ln) for ln in lines]
        assert "█" in out
    assert "no forecasts yet" in render_predictions([], 80)


def test_broad_influence_still_names_its_peak() -> None:
    att = _norm([1.0] * 60)
    for i in range(20, 30):  # a broad bump 2.5-3.3 min ago, not enough to "drive" it
        att[i] *= 2.2
    text = explain(_pred(_norm(att)))
    assert text.startswith("spread over the whole 5 min context, most around")
    assert "min" in text.split("most around")[1]
    assert "most around" not in explain(_pred([1 / 60] * 60))
