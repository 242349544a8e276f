"""Privacy and sync configuration: precise errors for bounds and epsilons."""

from __future__ import annotations

import pytest

from edgetwin.config import parse_config
from edgetwin.errors import ConfigError


def test_defaults_are_valid() -> None:
    cfg = parse_config("")
    assert cfg.privacy.epsilon_per_release == 0.5
    assert cfg.sync.backoff_initial_s <= cfg.sync.backoff_max_s


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[privacy]\nbounds = { hr_mean = [120, 40] }",
         "privacy.bounds.hr_mean lower 120.0 must be below upper 40.0"),
        ("[privacy]\nbounds = { hr_mean = [60, 60] }", "privacy.bounds.hr_mean lower"),
        ("[privacy]\nbounds = { hr_mean = [60] }",
         "privacy.bounds.hr_mean must be [lower, upper]"),
        ("[privacy]\nbounds = { hr_meen = [40, 120] }", "did you mean 'privacy.bounds.hr_mean'"),
        ("[privacy]\nepsilon_per_release = 0", "privacy.epsilon_per_release is 0.0; must be"),
        ("[privacy]\nepsilon_per_release = -1", "privacy.epsilon_per_release is -1.0"),
        ("[privacy]\nepsilon_per_period = 0.0", "privacy.epsilon_per_period"),
        ("[privacy]\nepsilon_lifetime = 0", "privacy.epsilon_lifetime"),
        ("[privacy]\nepsilon_per_release = 3.0", "exceeds privacy.epsilon_per_period"),
        ("[privacy]\nepsilon_per_period = 200.0", "exceeds privacy.epsilon_lifetime"),
        ("[privacy]\nepsilon_per_release = nan", "must be finite"),
        ("[sync]\nbackoff_max_s = 1", "sync.backoff_max_s must be >="),
        ("[sync]\ntimeout = 3", "did you mean 'sync.timeout_s'"),
    ],
)
def test_bad_privacy_config_is_refused_precisely(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="/h/config.toml")
    assert expected in str(err.value)
    assert str(err.value).startswith("/h/config.toml:")


def test_bounds_override_is_used() -> None:
    cfg = parse_config("[privacy]\nbounds = { hr_mean = [40, 120] }")
    assert cfg.privacy.bounds == {"hr_mean": [40.0, 120.0]}
