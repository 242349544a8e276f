"""The ``edgetwin`` command line."""
