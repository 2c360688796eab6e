"""Evaluation of a flat model on a labelled set, in batches, without gradients."""

from __future__ import annotations

import torch

from fedtorch.flat import FlatModule


@torch.no_grad()
def evaluate(
    replica: FlatModule, x: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, loss_fn, batch_size: int = 1000,
    buffers: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy of the flat model ``x`` on ``(inputs, targets)``, with the
    module in evaluation mode (BatchNorm uses its running statistics ``buffers``); the
    replica is left in training mode.

    Args:
        replica: a model replica (its parameters are overwritten with ``x``, its buffers
            with ``buffers``).
        x: ``(P,)`` model.
        inputs: ``(N, ...)`` inputs on the replica's device.
        targets: ``(N,)`` int64 labels.
        loss_fn: ``(logits, targets, reduction="sum") -> loss``.
        batch_size: samples per forward pass (memory bound, not a hyper-parameter).
        buffers: ``(Q,)`` the model's buffers (BatchNorm statistics); required when the
            model has any.

    Returns:
        ``(mean loss per sample, accuracy in [0, 1])``.

    Raises:
        ValueError: empty evaluation set, or a model with buffers evaluated without them.
    """
    n = len(targets)
    if n == 0:
        raise ValueError("cannot evaluate on an empty set")
    replica.params.copy_(x)
    if replica.has_buffers:
        if buffers is None:
            raise ValueError("the model has buffers (BatchNorm statistics): evaluate it with them")
        replica.load_buffers(buffers)
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    replica.module.eval()
    try:
        for start in range(0, n, batch_size):
            logits = replica.module(inputs[start : start + batch_size])
            t = targets[start : start + batch_size]
            loss += loss_fn(logits, t, reduction="sum").double()
            correct += (logits.argmax(dim=1) == t).sum()
    finally:
        replica.module.train()
    return loss.item() / n, correct.item() / n
