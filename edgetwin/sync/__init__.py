"""Outbox and uplinks for differentially private releases.

Daemon hooks (in :mod:`edgetwin.sync.service`): ``run_due_releases(store, config,
now) -> list[DPRelease]`` and ``drain_outbox(store, config, now) -> OutboxReport``.
Modules: ``outbox`` (store-and-forward), ``payload`` (signed envelope,
``release.schema.json``), ``signing`` (device Ed25519 key), ``target``,
``uplink`` (HTTPS, MQTT 5), ``collector`` (reference receiver).
"""
