"""The local dashboard (served by the daemon or `edgetwin dashboard`) and the offline report."""
