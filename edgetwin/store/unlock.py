"""From CLI options to an unlocked twin: key file, passphrase file or a hidden prompt."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from edgetwin.errors import UsageError
from edgetwin.store.keys import Secret
from edgetwin.store.twin import TwinStore

if TYPE_CHECKING:
    from edgetwin.cli.common import AppContext

_LOGGER = logging.getLogger(__name__)


def read_secret(app: AppContext, *, create: bool = False, prompt: str | None = None) -> Secret:
    """``--keyfile`` / ``EDGETWIN_KEYFILE``, else ``--passphrase-file`` /
    ``EDGETWIN_PASSPHRASE_FILE``, else a hidden prompt (asked twice when creating)."""
    if app.keyfile is not None:
        return Secret.keyfile(app.keyfile)
    if app.passphrase_file is not None:
        return Secret.passphrase(read_passphrase_file(app.passphrase_file))
    import click

    try:
        text = click.prompt(
            prompt or ("New passphrase" if create else "Passphrase"),
            hide_input=True,
            confirmation_prompt="Repeat the passphrase" if create else False,
            err=True,
        )
    except click.Abort as exc:
        raise UsageError(
            "a passphrase is needed and none was typed",
            hint="use --passphrase-file / EDGETWIN_PASSPHRASE_FILE or --keyfile",
        ) from exc
    return Secret.passphrase(str(text))


def read_passphrase_file(path: Path) -> str:
    """A passphrase file's text without its final line break."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UsageError(f"passphrase file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read passphrase file {path}: {exc}") from exc
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise UsageError(f"passphrase file {path} is empty")
    return text


def open_twin_from_app(app: AppContext, *, create: bool = False) -> TwinStore:
    """Unlock the twin at ``app.home`` (or create it); a failed unlock is audited."""
    secret = read_secret(app, create=create)
    if create:
        return TwinStore.create(app.home, secret)
    return TwinStore.open(app.require_home(), secret)

