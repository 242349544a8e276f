"""The twin encrypted at rest: key hierarchy, authenticated store, crypto-shredding, audit chain.

``TwinStore`` is the only way the rest of edgetwin touches persisted data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgetwin.store.keys import KdfParams, Secret, new_keyfile
from edgetwin.store.reports import ForgetReport, Problem, StreamInfo, VerifyReport
from edgetwin.store.twin import TwinStore

if TYPE_CHECKING:
    from edgetwin.cli.common import AppContext

__all__ = [
    "ForgetReport",
    "KdfParams",
    "Problem",
    "Secret",
    "StreamInfo",
    "TwinStore",
    "VerifyReport",
    "new_keyfile",
    "open_twin_from_app",
    "read_secret",
]


def open_twin_from_app(app: AppContext, *, create: bool = False) -> TwinStore:
    """Unlock (or create) the twin of a CLI invocation; see :mod:`edgetwin.store.unlock`."""
    from edgetwin.store.unlock import open_twin_from_app as _open

    return _open(app, create=create)


def read_secret(app: AppContext, *, create: bool = False, prompt: str | None = None) -> Secret:
    """The Secret a CLI invocation supplies; see :mod:`edgetwin.store.unlock`."""
    from edgetwin.store.unlock import read_secret as _read

    return _read(app, create=create, prompt=prompt)
