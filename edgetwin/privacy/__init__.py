"""Consent, clipping, differential privacy noise and the budget accountant."""
