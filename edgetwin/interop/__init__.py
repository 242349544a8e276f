"""Speaking other tools' languages: LSL streams, XDF files, FHIR R4 and Open mHealth exports.

Each module here stands alone and is imported by the CLI or the daemon only when used:
nothing in this package is loaded by a plain ``import edgetwin``.
"""

from __future__ import annotations
