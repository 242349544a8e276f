"""Training-side code for edgetwin's on-device models (needs the ``train`` extra: torch)."""
