"""Encrypted twin bundles in the age format, with open formats inside.

A bundle is one age v1 file (pyrage, the binding of the Rust age
implementation) holding a tar: ``manifest.json`` first, then the feature
timeline (CSV), predictions (JSON lines), raw streams (EDF+, SNIRF or CSV),
records and the audit log. :func:`export_bundle` writes one;
:func:`import_bundle` verifies one completely and restores it.
"""

from __future__ import annotations

from edgetwin.bundle.export import PASSPHRASE_LIMIT, ExportReport, export_bundle
from edgetwin.bundle.importer import ImportReport, home_state, import_bundle, unpack_bundle

__all__ = [
    "PASSPHRASE_LIMIT",
    "ExportReport",
    "ImportReport",
    "export_bundle",
    "home_state",
    "import_bundle",
    "unpack_bundle",
]
