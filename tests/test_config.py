from __future__ import annotations

from pathlib import Path

import pytest

from edgetwin.config import Config, default_config_text, load_config, parse_config
from edgetwin.errors import ConfigError


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path) == Config()


def test_values_are_parsed_into_frozen_sections() -> None:
    cfg = parse_config("[twin]\nstep_s = 10\n[privacy.bounds]\nhr_mean = [40, 180]\n")
    assert cfg.twin.step_s == 10.0
    assert cfg.privacy.bounds == {"hr_mean": [40.0, 180.0]}
    with pytest.raises(AttributeError):
        cfg.twin.step_s = 3  # type: ignore[misc]


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("[twin]\nstep_secs = 5\n", source="/h/config.toml")
    msg = str(err.value)
    assert "/h/config.toml" in msg and "twin.step_secs" in msg and "twin.step_s" in msg


def test_unknown_section_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'daemon'"):
        parse_config("[deamon]\nwatchdog_s = 3\n")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[twin]\nstep_s = 'five'\n", "twin.step_s"),
        ("[twin]\nstep_s = -1\n", "greater than 0"),
        ("[daemon]\nhub_queue_batches = 1.5\n", "whole number"),
        ("[daemon]\nmax_uncommitted_mib = 0\n", "daemon.max_uncommitted_mib"),
        ("[inference]\nprecision = 'int4'\n", "int8"),
        ("[privacy.bounds]\nhr_mean = [180, 40]\n", "lower 180"),
        ("[privacy]\nepsilon_per_release = 0\n", "epsilon_per_release"),
        ("twin = 3\n", "must be a table"),
        ("[twin\n", "not valid TOML"),
    ],
)
def test_bad_values_name_the_key(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_config(text)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_default_text_round_trips() -> None:
    assert parse_config(default_config_text()) == Config()


def test_sync_interval_is_configurable_within_bounds() -> None:
    assert parse_config("[sync]\ninterval_s = 60\n").sync.interval_s == 60.0
    assert Config().sync.interval_s == 900.0
    for bad in ("1", "100000"):
        with pytest.raises(ConfigError, match=r"sync\.interval_s"):
            parse_config(f"[sync]\ninterval_s = {bad}\n")
