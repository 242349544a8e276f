"""Raw signals to the twin's per-step feature timeline."""
