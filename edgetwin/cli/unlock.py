"""From CLI options to an unlocked twin: key file, passphrase file or a hidden prompt.

The prompt lives here, in the CLI: the store only takes a :class:`Secret` and
never talks to a terminal.
"""

from __future__ import annotations

import click

from edgetwin.cli.common import AppContext
from edgetwin.errors import UsageError, WrongKey
from edgetwin.store import Secret, TwinStore
from edgetwin.store.keys import read_passphrase_file


def read_secret(app: AppContext, *, create: bool = False, prompt: str | None = None) -> Secret:
    """``--keyfile`` / ``EDGETWIN_KEYFILE``, else ``--passphrase-file`` /
    ``EDGETWIN_PASSPHRASE_FILE``, else a hidden prompt (asked twice when creating)."""
    if app.keyfile is not None:
        return Secret.keyfile(app.keyfile)
    if app.passphrase_file is not None:
        return Secret.passphrase(read_passphrase_file(app.passphrase_file))
    text = ask_hidden(
        prompt or ("New passphrase" if create else "Passphrase"),
        confirm="Repeat the passphrase" if create else None,
        what="a passphrase",
        hint="use --passphrase-file / EDGETWIN_PASSPHRASE_FILE or --keyfile",
    )
    return Secret.passphrase(str(text))


def ask_hidden(text: str, *, confirm: str | None, what: str, hint: str) -> str:
    """A hidden prompt (asked twice with ``confirm``); a UsageError naming ``hint`` when
    nothing is typed or there is no terminal (getpass would warn and echo instead)."""
    import getpass
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", getpass.GetPassWarning)
            value = click.prompt(text, hide_input=True, confirmation_prompt=confirm or False,
                                 err=True)
    except getpass.GetPassWarning as exc:
        raise UsageError(f"{what} is needed and there is no terminal to ask for it on",
                         hint=hint) from exc
    except click.Abort as exc:
        raise UsageError(f"{what} is needed and none was typed", hint=hint) from exc
    return str(value)


def check_given_secret(app: AppContext) -> None:
    """When a key file or passphrase file was given, prove it opens the twin (WrongKey if not).

    For commands a running daemon answers (``status``): the daemon holds the keys, so
    without this a wrong secret would pass unnoticed where every other command says exit 3.
    A failed check is audited like any failed unlock. Nothing is asked when none was given.
    """
    from edgetwin.store.audit import record_failed_unlock
    from edgetwin.store.keys import KEYSTORE_FILE, Keystore

    if app.keyfile is None and app.passphrase_file is None:
        return
    home = app.require_home()
    secret = read_secret(app)
    try:
        Keystore.load(home / KEYSTORE_FILE).unlock(secret)
    except WrongKey:
        record_failed_unlock(home, secret.kind)
        raise


def open_twin_from_app(app: AppContext, *, create: bool = False) -> TwinStore:
    """Unlock the twin at ``app.home`` (or create it); a failed unlock is audited.

    Every unlock also removes what an export or import killed mid-way left
    behind, so a crash never leaves its staging files for long.
    """
    from edgetwin.bundle.staging import remove_leftovers

    secret = read_secret(app, create=create)
    if create:
        return TwinStore.create(app.home, secret)
    store = TwinStore.open(app.require_home(), secret)
    remove_leftovers(store.home)
    return store
