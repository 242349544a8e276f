"""Emulated hardware for tests, benchmarks and the demo; never imported by the runtime sources.

``bridge`` is a firmware bridge on a pseudo-terminal. The BlueZ emulator needs
the dev-only ``dbus-fast`` and lives with the tests (``tests/sources/bluez_emulator.py``).
"""
