"""edgetwin: a person's digital twin that runs on their own device."""

from __future__ import annotations

__version__ = "0.1.0"
