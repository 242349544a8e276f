"""The long-running daemon: supervisor, hub, scheduler and control socket."""
