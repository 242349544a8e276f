from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from edgetwin import __version__
from edgetwin.cli.main import _COMMANDS, cli


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgetwin", "--version"], capture_output=True, text=True, check=True
    )
    assert __version__ in result.stdout


def test_every_design_command_is_listed_and_importable() -> None:
    out = CliRunner().invoke(cli, ["--help"]).output
    for name in ("init", "demo", "pair", "daemon", "status", "ingest", "timeline", "predictions",
                 "export", "import", "sync", "collector", "consent", "forget", "audit"):
        assert name in _COMMANDS
        assert f"  {name}" in out, name
        sub = CliRunner().invoke(cli, [name, "--help"])
        assert sub.exit_code == 0, (name, sub.output)


def test_status_does_not_import_heavy_layers() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from edgetwin.cli.main import cli\n"
        "CliRunner().invoke(cli, ['status', '--help'])\n"
        "heavy = [m for m in ('onnxruntime', 'brainflow', 'torch', 'bleak', 'opendp') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""


def test_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2
