"""Outbox and uplinks for differentially private releases."""
