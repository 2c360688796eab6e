"""What every executor shares: a model replica and the training data on its device,
the local-training settings, and evaluation of a flat model."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from fedtorch.execution.evaluation import evaluate
from fedtorch.execution.local_training import MINIBATCH, broadcast_to, train_task
from fedtorch.execution.slots import intra_op_threads
from fedtorch.flat import FlatModule
from fedtorch.protocol import Broadcast, ClientResult, ClientTask, State



def check_count(key: str, value: int | None) -> None:
    """The one rule for ``execution.threads`` and ``execution.max_clients_per_step``
    (executors and the config both call it): null or an integer >= 1.

    Raises:
        ValueError: naming ``execution.<key>``, the value and what is allowed.
    """
    if value is not None and value < 1:
        raise ValueError(f"execution.{key}={value!r} is not allowed: must be null or >= 1")

class Executor:
    """Base of the executors (``run`` is theirs; see :mod:`fedtorch.execution`).

    Args:
        model_factory: ``() -> nn.Module`` building one replica (architecture only; its
            initial weights are overwritten by every client's ``init_local``).
        train_x: ``(N, ...)`` training inputs (moved to ``device`` once).
        train_y: ``(N,)`` training labels.
        batch_size: local minibatch size B.
        loss_fn: ``(logits, targets, reduction=...) -> loss``.
        device: a torch device string, e.g. ``"cpu"`` or ``"cuda:0"``: where the data live,
            messages are returned and evaluation runs.
        threads: intra-op threads while training (default: the caller's count).
        gradients: where minibatches and gradients come from
            (:mod:`fedtorch.execution.local_training`): :data:`MINIBATCH` (default), or a
            source such as local DP-SGD (:class:`fedtorch.privacy.LocalDPSGD`).

    Raises:
        ValueError: ``threads`` < 1.
    """

    name = "base"

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
        gradients=MINIBATCH,
    ):
        check_count("threads", threads)
        self.model_factory = model_factory
        self.device = torch.device(device)
        self.replica = FlatModule(model_factory().to(self.device))
        self.train_x = train_x.to(self.device)
        self.train_y = train_y.to(self.device)
        self.batch_size = batch_size
        self.loss_fn = loss_fn
        self.threads = threads
        self.gradients = gradients
        self.description = self.name

    def run_one_by_one(self, algorithm, broadcast: Broadcast, tasks: Sequence[ClientTask], states: Sequence[State]) -> list[ClientResult]:
        """Local training of ``tasks`` (with their persistent ``states``) in order, one
        client at a time on :attr:`replica` with :attr:`threads` intra-op threads: the
        serial executor's ``run``, and the fallback of executors that cannot batch a task.

        Returns:
            One :class:`ClientResult` per task, in task order; states on the CPU.
        """
        bcast = broadcast_to(broadcast, self.device)
        with intra_op_threads(self.threads):
            return [
                train_task(algorithm, self.replica, self.train_x, self.train_y, task, self.batch_size, bcast, state, self.loss_fn,
                           self.gradients)
                for task, state in zip(tasks, states)
            ]

    def close(self) -> None:
        """Release worker threads or other resources (nothing, unless an executor has some)."""

    def evaluate(self, x: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
                 buffers: torch.Tensor | None = None) -> tuple[float, float]:
        """(mean loss, accuracy in [0, 1]) of the flat model ``x`` (``(P,)``, with its
        ``(Q,)`` ``buffers`` if the model has any) on a labelled set, in evaluation mode."""
        b = None if buffers is None else buffers.to(self.device)
        return evaluate(self.replica, x.to(self.device), inputs.to(self.device), targets.to(self.device), self.loss_fn, buffers=b)
