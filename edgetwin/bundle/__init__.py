"""Encrypted twin bundles in the age format, with open formats inside.

A bundle is one age v1 file (pyrage, the binding of the Rust age
implementation) holding a tar: ``manifest.json`` first, then the feature
timeline (CSV), predictions (JSON lines), raw streams (EDF+, SNIRF or CSV),
records and the audit log. :func:`export_bundle` writes one;
:func:`import_bundle` verifies one completely and restores it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgetwin.bundle.export import PASSPHRASE_LIMIT, ExportReport, export_bundle
    from edgetwin.bundle.importer import ImportReport, home_state, import_bundle, unpack_bundle

# Imported when first used: every command that unlocks a twin imports bundle.staging (to
# clear an interrupted import's leftovers), and export and import cost ~35 ms to import.
_WHERE = {
    "PASSPHRASE_LIMIT": "export",
    "ExportReport": "export",
    "export_bundle": "export",
    "ImportReport": "importer",
    "home_state": "importer",
    "import_bundle": "importer",
    "unpack_bundle": "importer",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)

__all__ = [
    "PASSPHRASE_LIMIT",
    "ExportReport",
    "ImportReport",
    "export_bundle",
    "home_state",
    "import_bundle",
    "unpack_bundle",
]
