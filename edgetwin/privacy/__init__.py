"""Consent, clipping bounds, OpenDP noise and the privacy-budget accountant.

Modules: ``metrics`` (the releasable summaries and their default bounds),
``summaries`` (usable frames of a window), ``mechanism`` (OpenDP Laplace, the
only minter of ``release.DPRelease``), ``accountant`` (per-period and lifetime
epsilon ledger), ``consent``; ``records`` is the slice of the store API used.
"""
