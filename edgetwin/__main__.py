"""``python -m edgetwin`` runs the CLI."""

from __future__ import annotations

from edgetwin.cli.main import main

if __name__ == "__main__":
    main()
