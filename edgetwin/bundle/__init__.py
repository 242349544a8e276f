"""Encrypted twin bundles in the age format."""
