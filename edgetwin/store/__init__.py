"""The twin encrypted at rest: key hierarchy, authenticated store, crypto-shredding, audit chain.

``TwinStore`` is the only way the rest of edgetwin touches persisted data.
"""

from __future__ import annotations

from edgetwin.store.keys import KdfParams, Secret, new_keyfile, read_passphrase_file
from edgetwin.store.reports import ForgetReport, Problem, StreamInfo, VerifyReport
from edgetwin.store.twin import TwinStore

__all__ = [
    "ForgetReport",
    "KdfParams",
    "Problem",
    "Secret",
    "StreamInfo",
    "TwinStore",
    "VerifyReport",
    "new_keyfile",
    "read_passphrase_file",
]

