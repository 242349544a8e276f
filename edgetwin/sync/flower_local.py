"""A SecAgg+ round among in-process ClientApps: Flower's real workflow and mod, no network.

The aarch64 smoke runs one on a Pi, ``scripts/bench_secagg.py`` measures the protocol's cost
with it, and the round-fault tests use it to lose the server at a chosen stage. Each device
is a ClientApp with its own Context (Flower's per-node state, where ``secaggplus_mod`` keeps
its keys), messages are deep-copied the way a real Grid serialises them, and the stage hook
sees every batch before it is delivered.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from flwr.serverapp.grid import Grid

StageHook = Callable[[str, list[Any]], None]


def stage_of(msg: Any) -> str:
    """The SecAgg+ stage a server message asks for ('' for none)."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    return str(configs.get(Key.STAGE, "")) if configs is not None else ""


class LocalGrid(Grid):
    """Delivers each message to the ClientApp of its node, in this process.

    ``nodes`` is read at every call, so a test can add a device mid-round (a late joiner).
    ``before_stage(stage, messages)`` runs before a batch is delivered. It may raise (the
    server losing its SuperLink at that stage) or remove messages from the list (those
    devices vanish: they get nothing and send nothing, from that stage on).
    ``after_reply(node, reply, cpu_s)`` sees each reply (the bench counts CPU and bytes there).
    """

    def __init__(self, app: Any, contexts: dict[int, Any], *, nodes: Iterable[int] | None = None,
                 before_stage: StageHook | None = None,
                 after_reply: Callable[[int, Any, float], None] | None = None) -> None:
        self._app, self._contexts = app, contexts
        self.nodes: list[int] = list(contexts if nodes is None else nodes)
        self._before, self._after = before_stage, after_reply
        self._run: Any = None

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        from flwr.supercore.run import Run

        return Run.create_empty(1) if self._run is None else self._run

    def create_message(self, content: Any, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Any:
        from flwr.app import Message

        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages: Any) -> list[str]:
        raise NotImplementedError("LocalGrid delivers through send_and_receive only")

    def pull_messages(self, message_ids: Any) -> list[Any]:
        raise NotImplementedError("LocalGrid delivers through send_and_receive only")

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None
                         ) -> list[Any]:
        import time

        batch = list(messages)
        if self._before is not None and batch:
            self._before(stage_of(batch[0]), batch)
        replies = []
        for msg in batch:
            node = msg.metadata.dst_node_id
            # a real Grid serialises each message; the workflow shares one content object
            c0 = time.process_time()
            reply = self._app(copy.deepcopy(msg), self._contexts[node])
            if self._after is not None:
                self._after(node, reply, time.process_time() - c0)
            replies.append(reply)
        return replies


def node_context(node: int, node_config: dict[str, Any]) -> Any:
    """A fresh Flower Context for one in-process device."""
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=node, node_config=dict(node_config), state=RecordDict(),
                   run_config={})


def server_context(run_config: dict[str, Any]) -> Any:
    """The ServerApp's Context for one round (``run_config`` as ``flwr run`` would pass it)."""
    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    # a real Message needs the run id of the process's task (a ServerApp process has one)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                   run_config=dict(run_config))
