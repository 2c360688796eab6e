"""The serial executor: clients one after another on one model replica.

It is the reference every other executor must match bit-for-bit (or, for vectorised
execution, within float tolerance).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from fedtorch.execution.evaluation import evaluate
from fedtorch.execution.local_training import broadcast_to, train_task
from fedtorch.execution.slots import intra_op_threads
from fedtorch.flat import FlatModule
from fedtorch.protocol import Broadcast, ClientResult, ClientTask, State


class SerialExecutor:
    """Train the selected clients sequentially on ``device``.

    Args:
        model_factory: ``() -> nn.Module`` building one replica (architecture only; its
            initial weights are overwritten by every client's ``init_local``).
        train_x: ``(N, ...)`` training inputs (moved to ``device`` once).
        train_y: ``(N,)`` training labels.
        batch_size: local minibatch size B.
        loss_fn: ``(logits, targets, reduction=...) -> loss``.
        device: a torch device string, e.g. ``"cpu"`` or ``"cuda:0"``.
        threads: intra-op threads while training (default: the caller's count). The
            parallel executor's CPU workers match this executor bit for bit when it runs
            with their per-slot count.
    """

    name = "serial"

    def __init__(
        self,
        model_factory: Callable[[], nn.Module],
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        batch_size: int,
        loss_fn,
        device: str = "cpu",
        *,
        threads: int | None = None,
    ):
        self.device = torch.device(device)
        self.replica = FlatModule(model_factory().to(self.device))
        self.train_x = train_x.to(self.device)
        self.train_y = train_y.to(self.device)
        self.batch_size = batch_size
        self.loss_fn = loss_fn
        self.threads = threads
        count = f"{threads} intra-op thread(s)" if threads else "the process's intra-op threads"
        self.description = f"serial on {self.device} ({count})"

    def run(self, algorithm, broadcast: Broadcast, tasks: Sequence[ClientTask], states: Sequence[State]) -> list[ClientResult]:
        """Local training of ``tasks`` (with their persistent ``states``), in order.

        Returns:
            One :class:`ClientResult` per task, in task order; states come back on the
            CPU (the client-state store keeps them there).
        """
        bcast = broadcast_to(broadcast, self.device)
        results = []
        with intra_op_threads(self.threads):
            for task, state in zip(tasks, states):
                results.append(
                    train_task(algorithm, self.replica, self.train_x, self.train_y, task, self.batch_size, bcast, state, self.loss_fn)
                )
        return results

    def evaluate(self, x: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        """(mean loss, accuracy) of the flat model ``x`` on a labelled set."""
        return evaluate(self.replica, x.to(self.device), inputs.to(self.device), targets.to(self.device), self.loss_fn)

