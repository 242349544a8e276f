"""One exception tree for everything edgetwin raises on purpose.

Each class carries the CLI exit code of DESIGN.md and a message that says what
went wrong, where, and what to do. Third-party errors are translated at the
driver boundary (``raise X from exc``); nothing above a source matches on a
library's error type or on error strings.

::

    EdgetwinError (1)
    ├── UsageError (2)
    │   └── ConfigError (2)             config.toml missing/garbled/bad value
    ├── HomeError (2)                   twin home unwritable, missing, not a twin
    │   ├── DaemonAlreadyRunning (2)    another daemon holds the home's lock
    │   └── StoreFull (2)               the disk under the twin is full; nothing committed lost
    ├── DaemonNotRunning (6)            control socket has no daemon behind it
    ├── WrongKey (3)                    passphrase, key file, identity
    ├── DataCorrupt (4)                 tampered or truncated store row, bundle, model
    │   └── SchemaTooNew (4)            store written by a newer edgetwin
    ├── PrivacyRefused (5)
    │   ├── BudgetExhausted (5)
    │   └── ConsentMissing (5)
    ├── SourceError (6)                 base for sensor trouble
    │   ├── TransientSourceError (6)    a retry can help: link lost, timeout
    │   ├── DeviceNotFound (6)          nothing answers at that address/port
    │   ├── PairingRefused (6)          a retry will not help until a person acts
    │   └── DriverMissing (6)           native library absent for this CPU
    ├── MalformedInput (4)              a packet, frame, file or record that breaks its format
    └── UplinkError (6)                 collector or broker unreachable or refusing
"""

from __future__ import annotations


class EdgetwinError(Exception):
    """Base of every expected error; ``exit_code`` is the CLI's exit status."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(EdgetwinError):
    exit_code = 2


class ConfigError(UsageError):
    """config.toml cannot be used; the message names the file and key."""


class HomeError(EdgetwinError):
    exit_code = 2


class DaemonAlreadyRunning(HomeError):
    pass


class StoreFull(HomeError):
    """A write failed for lack of space; committed data is intact, pending work is kept."""


class DaemonNotRunning(EdgetwinError):
    exit_code = 6


class WrongKey(EdgetwinError):
    exit_code = 3


class DataCorrupt(EdgetwinError):
    exit_code = 4


class SchemaTooNew(DataCorrupt):
    pass


class PrivacyRefused(EdgetwinError):
    exit_code = 5


class BudgetExhausted(PrivacyRefused):
    pass


class ConsentMissing(PrivacyRefused):
    pass


class SourceError(EdgetwinError):
    exit_code = 6


class TransientSourceError(SourceError):
    """The link failed in a way a reconnect may fix."""


class DeviceNotFound(SourceError):
    """Nothing answered; retrying later may help, but not right away."""


class PairingRefused(SourceError):
    """The device refused us (bad key, bonding): wait the longest backoff."""


class DriverMissing(SourceError):
    """A native driver library is absent; no retry will help."""


class MalformedInput(EdgetwinError):
    """A packet, frame, file or record does not follow its format."""

    exit_code = 4


class UplinkError(EdgetwinError):
    exit_code = 6
