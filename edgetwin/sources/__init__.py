"""Sensor sources: one module per transport behind the ``Source`` contract."""
