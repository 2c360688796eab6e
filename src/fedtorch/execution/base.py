"""What every executor shares: a model replica and the training data on its device,
the local-training settings, and evaluation of a flat model."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fedtorch.execution.evaluation import evaluate
from fedtorch.flat import FlatModule


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
    ):
        if threads is not None and threads < 1:
            raise ValueError(f"execution.threads={threads!r} is not allowed: must be null or >= 1")
        self.model_factory = model_factory
        self.device = torch.device(device)
        self.replica = FlatModule(model_factory().to(self.device))
        self.train_x = train_x.to(self.device)
        self.train_y = train_y.to(self.device)
        self.batch_size = batch_size
        self.loss_fn = loss_fn
        self.threads = threads
        self.description = self.name

    def evaluate(self, x: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        """(mean loss, accuracy in [0, 1]) of the flat model ``x`` (``(P,)``) on a labelled set."""
        return evaluate(self.replica, x.to(self.device), inputs.to(self.device), targets.to(self.device), self.loss_fn)
