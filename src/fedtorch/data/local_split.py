"""Per-client held-out splits: part of each client's samples kept for local evaluation.

Personalisation and fairness metrics (Per-FedAvg's personalised accuracy, q-FFL's spread
of per-client accuracy) need each client's own test data. ``split_holdout`` carves it
from the client's training indices, so with per-client evaluation on clients train on
the remaining part only. The split depends only on ``(seed, client)``: every algorithm
of a comparison sees the same one.
"""

from __future__ import annotations

import math

import torch

from fedtorch.seeding import generator


def check_holdout(fraction: float) -> None:
    """The one rule for ``eval.holdout`` (the config and :func:`split_holdout` call it).

    Raises:
        ValueError: ``fraction`` outside (0, 1), naming ``eval.holdout``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"eval.holdout={fraction!r} is not allowed: must be in (0, 1)")


def split_holdout(
    client_indices: list[torch.Tensor], fraction: float, seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Split every client's indices into (train, held-out).

    Client i holds out ``floor(fraction * n_i)`` samples, but at least one and at most
    ``n_i - 1`` when ``n_i >= 2``; a client with a single sample keeps it for training
    and has an empty held-out set. The held-out samples are a uniform draw from the
    generator of ``(seed, i, "holdout")``; both parts keep the original index order.

    Args:
        client_indices: ``(n_i,)`` int64 sample indices per client.
        fraction: share of each client's samples to hold out, in (0, 1).
        seed: the data-split seed (``data.seed``).

    Returns:
        ``(train, holdout)``: two lists of ``(n_i - h_i,)`` and ``(h_i,)`` int64 tensors.

    Raises:
        ValueError: ``fraction`` outside (0, 1).
    """
    check_holdout(fraction)
    train, holdout = [], []
    for i, idx in enumerate(client_indices):
        n = idx.numel()
        h = 0 if n < 2 else min(max(math.floor(fraction * n), 1), n - 1)
        held = torch.zeros(n, dtype=torch.bool)
        held[torch.randperm(n, generator=generator(seed, i, "holdout"))[:h]] = True
        held = held.to(idx.device)
        train.append(idx[~held])
        holdout.append(idx[held])
    return train, holdout
