"""The ``edgetwin`` root command: global options, lazy subcommands, error mapping.

Subcommands are imported only when invoked, so ``edgetwin status`` does not
pay for onnxruntime or BrainFlow.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

import click

from edgetwin import __version__
from edgetwin.cli.common import AppContext, SuggestingGroup
from edgetwin.errors import EdgetwinError

# command name -> "module:attribute"; each module owns its commands.
_COMMANDS: dict[str, str] = {
    "init": "edgetwin.cli.keys:init_cmd",
    "keys": "edgetwin.cli.keys:keys_group",
    "forget": "edgetwin.cli.keys:forget_cmd",
    "audit": "edgetwin.cli.keys:audit_cmd",
    "verify": "edgetwin.cli.keys:verify_cmd",
    "demo": "edgetwin.cli.daemon:demo_cmd",
    "daemon": "edgetwin.cli.daemon:daemon_group",
    "status": "edgetwin.cli.daemon:status_cmd",
    "pair": "edgetwin.cli.pair:pair_group",
    "ingest": "edgetwin.cli.data:ingest_cmd",
    "timeline": "edgetwin.cli.data:timeline_cmd",
    "predictions": "edgetwin.cli.data:predictions_cmd",
    "mark": "edgetwin.cli.markers:mark_cmd",
    "markers": "edgetwin.cli.markers:markers_cmd",
    "export": "edgetwin.cli.bundle:export_cmd",
    "import": "edgetwin.cli.bundle:import_cmd",
    "sync": "edgetwin.cli.sync:sync_group",
    "collector": "edgetwin.cli.collector:collector_cmd",
    "aggregator": "edgetwin.cli.aggregator:aggregator_cmd",
    "consent": "edgetwin.cli.sync:consent_group",
    "report": "edgetwin.cli.report:report_cmd",
    "dashboard": "edgetwin.cli.dashboard:dashboard_cmd",
}


class LazyGroup(SuggestingGroup):
    """A group whose subcommands are imported on first use."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """``-v`` / ``--verbose`` count wherever they stand, also after the subcommand."""
        return super().parse_args(ctx, _verbose_first(args))

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(
            name for name, target in _COMMANDS.items() if _module_exists(target.split(":")[0])
        )

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None or not _module_exists(target.split(":")[0]):
            return None
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; an expected error becomes one line and its exit code."""
        try:
            return super().invoke(ctx)
        except EdgetwinError as exc:
            app = ctx.find_object(AppContext)
            if app is not None and app.verbose:
                logging.getLogger("edgetwin").exception("error")
            click.echo(f"edgetwin: error: {exc}", err=True)
            raise click.exceptions.Exit(exc.exit_code) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgetwin")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGETWIN_HOME",
    help="Twin home directory [env EDGETWIN_HOME; default: the platform's user data dir].",
)
@click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="EDGETWIN_PASSPHRASE_FILE",
    help="Read the passphrase from this file [env EDGETWIN_PASSPHRASE_FILE].",
)
@click.option(
    "--keyfile",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="EDGETWIN_KEYFILE",
    help="Unlock with a key file instead of a passphrase [env EDGETWIN_KEYFILE].",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", count=True, help="More logging; tracebacks on errors.")
@click.pass_context
def cli(
    ctx: click.Context,
    home: Path | None,
    passphrase_file: Path | None,
    keyfile: Path | None,
    as_json: bool,
    verbose: int,
) -> None:
    """edgetwin: your digital twin, on your own device."""
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = AppContext(
        home_option=home,
        passphrase_file=passphrase_file,
        keyfile=keyfile,
        as_json=as_json,
        verbose=verbose,
    )


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    cli.main(args=argv, prog_name="edgetwin")


def _verbose_first(args: list[str]) -> list[str]:
    """Move -v, -vv, --verbose (before any ``--``) to the front, where the root parses them."""
    end = args.index("--") if "--" in args else len(args)
    verbose = [a for a in args[:end] if a == "--verbose" or _is_short_verbose(a)]
    if not verbose:
        return args
    rest = [a for a in args[:end] if not (a == "--verbose" or _is_short_verbose(a))]
    return [*verbose, *rest, *args[end:]]


def _is_short_verbose(arg: str) -> bool:
    return len(arg) >= 2 and arg[0] == "-" and set(arg[1:]) == {"v"}


def _module_exists(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
