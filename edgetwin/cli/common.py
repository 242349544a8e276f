"""What every command shares: the resolved twin home, output helpers."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgetwin.errors import HomeError

if TYPE_CHECKING:
    from edgetwin.config import Config


@dataclass
class AppContext:
    """Global options of one invocation."""

    home_option: Path | None
    passphrase_file: Path | None
    keyfile: Path | None
    as_json: bool
    verbose: int
    _config: Config | None = field(default=None, init=False, repr=False)

    @property
    def home(self) -> Path:
        """The twin home: ``--home``, ``EDGETWIN_HOME``, else the user data dir."""
        if self.home_option is not None:
            return self.home_option.expanduser().absolute()
        import platformdirs

        return Path(platformdirs.user_data_dir("edgetwin", appauthor=False))

    def require_home(self) -> Path:
        """The home of an existing twin, or a clear error."""
        home = self.home
        if not (home / "twin.db").exists():
            raise HomeError(
                f"{home} holds no twin",
                hint="run 'edgetwin init' first, or point --home / EDGETWIN_HOME at a twin",
            )
        return home

    def config(self) -> Config:
        """The twin's validated ``config.toml``: the one way every command reads it.

        A bad file is a ConfigError (exit 2) naming the file and the key, whichever
        command hit it first; a missing file means all defaults.
        """
        if self._config is None:
            from edgetwin.config import load_config

            self._config = load_config(self.require_home())
        return self._config


pass_app = click.make_pass_decorator(AppContext)


class SuggestingGroup(click.Group):
    """A command group whose unknown-command error names the closest command."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            import difflib

            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            ctx.fail(f"No such command '{name}'.{hint} See '{ctx.command_path} --help'.")
        return super().resolve_command(ctx, args)


def json_option(f: Any) -> Any:
    """A per-command ``--json`` flag that also honours the global one."""

    def _set(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.find_object(AppContext).as_json = True  # type: ignore[union-attr]
        return value

    return click.option(
        "--json", "json_flag", is_flag=True, expose_value=False, callback=_set,
        help="Machine-readable output.",
    )(f)


def emit_json(obj: Any) -> None:
    """Write one JSON document to stdout."""
    click.echo(json.dumps(obj, indent=None, separators=(",", ":"), default=_json_default))


def is_tty() -> bool:
    """Whether progress bars and colour make sense on stdout."""
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


def format_time(t: float) -> str:
    """An instant for people: local time with its UTC offset, to the second."""
    return dt.datetime.fromtimestamp(t).astimezone().isoformat(sep=" ", timespec="seconds")


def format_clock(t: float) -> str:
    """The local time of day only, for compact tables whose header names the zone."""
    return dt.datetime.fromtimestamp(t).astimezone().strftime("%H:%M:%S")


def local_zone() -> str:
    """The local UTC offset as tables name it, e.g. ``UTC+01:00``."""
    offset = dt.datetime.now().astimezone().strftime("%z")
    return f"UTC{offset[:3]}:{offset[3:]}"


def format_period(start: float, period: str) -> str:
    """A privacy period: ``the UTC day 2026-12-01``, ``the UTC hour 2026-12-01 14:00``."""
    when = dt.datetime.fromtimestamp(start, dt.UTC)
    text = when.strftime("%Y-%m-%d") if period == "day" else when.strftime("%Y-%m-%d %H:%M")
    return f"the UTC {period} {text}"


def format_value(key: str, value: Any) -> str:
    """A stored value as a person reads it: times as times, lists and tables spelled out,
    never a Python repr (``key`` tells a timestamp from a number)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and (key in {"t", "before", "after"}
                                           or key.endswith(("_start", "_t", "_at"))):
        return format_time(float(value))
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        if not value:
            return "-"
        inner = ",".join(f"{k}={format_value(str(k), v)}" for k, v in value.items())
        return f"({inner})"
    if isinstance(value, list | tuple):
        return ",".join(format_value(key, v) for v in value) or "-"
    text = str(value)
    # quoted only when a space would make it look like two values
    return json.dumps(text) if not text or any(c.isspace() for c in text) else text


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
