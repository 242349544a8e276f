"""The owner's views of the twin: the local dashboard and the offline report."""
