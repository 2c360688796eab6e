"""Stacking C clients for the vectorised executor: their round contexts as ``(C, 1)``
columns, their states as ``(C, ...)`` tensors, their minibatches as padded ``(K_max, C, B)``
index and weight tensors (the serial executor's draws), and a chunk's messages copied into
the round's rows."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from fedtorch.data.federated import minibatch_indices
from fedtorch.protocol import ClientResult, ClientTask, RoundContext, State
from fedtorch.seeding import generator


def into_rows(rows: dict[str, torch.Tensor], chunk: Sequence[int], count: int, trained: list[ClientResult]) -> list[ClientResult]:
    """``trained`` (one chunk's results) with message tensor field ``name`` of result j
    copied (bit for bit) into row ``chunk[j]`` of ``rows[name]`` (``(count, ...)``, made at
    the first chunk): a round's messages are then the rows of one tensor per field in task
    order, which ``ClientMessage.stack`` returns uncopied, and each chunk's ``(C, P)``
    outputs are freed when the chunk is done."""
    out = []
    for j, r in enumerate(trained):
        fields = {}
        for f in dataclasses.fields(r.message):
            v = getattr(r.message, f.name)
            if isinstance(v, torch.Tensor):
                if f.name not in rows:
                    rows[f.name] = v.new_empty((count, *v.shape))
                rows[f.name][chunk[j]].copy_(v)
                fields[f.name] = rows[f.name][chunk[j]]
        out.append(dataclasses.replace(r, message=dataclasses.replace(r.message, **fields)))
    return out


def stacked_context(tasks: Sequence[ClientTask], device: torch.device) -> RoundContext:
    """One :class:`RoundContext` for C clients: per-client fields as ``(C, 1)`` int64
    tensors, ``lr`` a float if all clients share it, else ``(C, 1)`` float32.

    Raises:
        ValueError: the tasks mix rounds or seeds.
    """
    first = tasks[0].ctx
    if any(t.ctx.round != first.round or t.ctx.seed != first.seed for t in tasks):
        raise ValueError("a vectorised chunk must hold clients of one round and one seed")

    def column(values, dtype=torch.int64) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device).unsqueeze(1)

    lrs = [t.ctx.lr for t in tasks]
    return RoundContext(
        round=first.round,
        client_id=column([t.ctx.client_id for t in tasks]),
        seed=first.seed,
        num_samples=column([t.ctx.num_samples for t in tasks]),
        num_steps=column([t.ctx.num_steps for t in tasks]),
        lr=lrs[0] if all(lr == lrs[0] for lr in lrs) else column(lrs, torch.float32),
    )


def stack_states(states: Sequence[State], device: torch.device) -> State:
    """C client states with the same keys -> one state of ``(C, ...)`` tensors on ``device``.

    Raises:
        ValueError: the states have different keys.
    """
    keys = set(states[0])
    if any(set(s) != keys for s in states):
        raise ValueError(f"client states have different keys: {sorted({k for s in states for k in s})}")
    return {k: torch.stack([s[k] for s in states]).to(device) for k in states[0]}


def padded_minibatches(tasks: Sequence[ClientTask], batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """All C clients' minibatches of one round as ``(K_max, C, B)`` sample indices (int64)
    and weights (float32, 1 for a real sample, 0 for padding), on ``device``.

    Client c's k-th minibatch is the k-th one ``minibatch_indices`` yields with the
    generator ``(seed, round, client, "minibatch")`` (the serial executor's draw). Rows are
    padded with index 0 and weight 0 (short last batches, and steps k >= K_c).
    """
    count = len(tasks)
    k_max = max(t.ctx.num_steps for t in tasks)
    if k_max == 0:
        return torch.zeros(0, count, batch_size, dtype=torch.int64, device=device), torch.zeros(0, count, batch_size, device=device)
    pad = torch.zeros(batch_size, dtype=torch.int64)
    rows = [[pad] * count for _ in range(k_max)]
    lengths = [[0] * count for _ in range(k_max)]
    for c, task in enumerate(tasks):
        ctx = task.ctx
        gen = generator(ctx.seed, ctx.round, ctx.client_id, "minibatch")
        for k, idx in enumerate(minibatch_indices(task.indices.cpu(), batch_size, ctx.num_steps, gen)):
            n = idx.numel()
            rows[k][c] = idx if n == batch_size else torch.cat([idx, pad[n:]])
            lengths[k][c] = n
    index = torch.stack([row for step in rows for row in step]).view(k_max, count, batch_size)
    weight = (torch.arange(batch_size) < torch.tensor(lengths).unsqueeze(-1)).float()
    return index.to(device), weight.to(device)
