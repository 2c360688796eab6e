"""Masking of finished clients in a vectorised chunk (:mod:`fedtorch.execution.vectorized`).

At step k every row of the chunk's ``(C, P)`` iterate is updated, but client i takes only
steps k < K_i: the executor saves the finished clients' rows of ``run.y`` and of every
per-client buffer before the step and writes them back after. Which buffers are per-client
follows from the vectorised convention of :mod:`fedtorch.protocol` (their shape by
construction), never from a size that may coincide: a shared ``(P,)`` buffer whose P equals
the chunk size C is not a stack of C clients.
"""

from __future__ import annotations

import torch

from fedtorch.protocol import LocalRun


def per_client_buffers(run: LocalRun) -> list[str]:
    """Names of the ``run.buffers`` tensors that hold one row per client of the chunk.

    Known from the vectorised convention of :mod:`fedtorch.protocol`, not guessed from a
    size: with ``run.y`` ``(C, P)``, a per-client buffer is 2-D with C rows (``(C, P)``,
    ``(C, 1)``: what a hook gets from ``run.y``, ``run.state``, ``g`` or a ``keepdim``
    reduction), and a buffer shared by the chunk has a one-client shape (0-dim, or ``(P,)``
    like ``run.broadcast.x``; also when P equals C). A shared ``(P,)`` buffer must not be
    masked: its entries are not clients.

    Raises:
        ValueError: a buffer whose leading dimension is C but which is neither 2-D nor a
            ``(P,)`` vector (e.g. a ``(C,)`` copy of ``run.loss``), naming the buffer, its
            shape and the shapes allowed.
    """
    count, numel = run.y.shape
    names = []
    for name, b in run.buffers.items():
        if b.dim() == 2 and b.shape[0] == count:
            names.append(name)
        elif b.dim() and b.shape[0] == count and not (b.dim() == 1 and b.shape[0] == numel):
            raise ValueError(
                f"run.buffers[{name!r}] has shape {tuple(b.shape)} in a vectorised chunk of {count} clients (P = {numel}): "
                f"a per-client buffer must be 2-D with one row per client, ({count}, {numel}) or ({count}, 1) "
                "(reduce with keepdim=True, or reshape run.loss to (C, 1)); a buffer shared by the chunk is 0-dim or (P,)"
            )
    return names


def save_rows(run: LocalRun, first: int) -> dict[str, torch.Tensor]:
    """Copies of rows ``first:`` (finished clients) of ``run.y`` and of every per-client
    buffer (:func:`per_client_buffers`)."""
    saved = {"": run.y[first:].clone()}
    for name in per_client_buffers(run):
        saved[name] = run.buffers[name][first:].clone()
    return saved


def restore_rows(run: LocalRun, first: int, saved: dict[str, torch.Tensor]) -> None:
    """Put back what :func:`save_rows` copied; per-client buffers created during the step
    (absent from ``saved``) get rows ``first:`` zeroed: a finished client never started
    them. Shared buffers are left as the step made them."""
    run.y[first:] = saved.pop("")
    for name in per_client_buffers(run):
        b = run.buffers[name]
        if name in saved:
            b[first:] = saved[name]
        else:
            b[first:] = 0
