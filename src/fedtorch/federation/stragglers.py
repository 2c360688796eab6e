"""How much local work the selected clients of a round (or asynchronous dispatch wave)
do: stragglers and early stopping (called by :func:`fedtorch.federation.planning.plan_tasks`).

Stragglers follow FedProx (Li et al., MLSys 2020, Sec. 5.2, "systems heterogeneity"): in
every round a fraction of the selected clients cannot finish the E local epochs and runs
only e_i ~ U{1, ..., E} of them. What the server does with them is the policy:

* ``drop``: FedAvg as in the paper, the stragglers are left out of the round (they are not
  trained at all, so the round aggregates only the M - floor(fraction M) others);
* ``keep``: FedProx, the partial work of every straggler is aggregated.

Draws: the stragglers of round t are the first floor(fraction x M) selected clients in the
permutation ``generator(seed, t, "stragglers")``; straggler i runs
e_i = 1 + randint(E) epochs from ``generator(seed, t, i, "straggler_epochs")``, i.e. seeded
per (round, client), so FedAvg and FedProx runs with one seed see the same stragglers doing
the same work. With a fixed ``local_steps`` K a straggler runs U{1..K} steps instead. A
fraction < 1 always leaves at least one client that is not a straggler.

Early stopping is stamped on every task (``RoundContext.early_stopping``) here too; the
local-training loop applies it.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from fedtorch.data.federated import steps_per_round
from fedtorch.protocol import ClientTask
from fedtorch.seeding import generator

POLICIES = ("drop", "keep")


def check_stragglers(fraction: float, policy: str) -> None:
    """The one rule for ``stragglers.fraction`` and ``stragglers.policy`` (the config, the
    loops' settings and :func:`plan_work` all call it).

    Raises:
        ValueError: ``fraction`` outside [0, 1), or ``policy`` not one of :data:`POLICIES`.
    """
    _check_fraction(fraction)
    if policy not in POLICIES:
        raise ValueError(f"stragglers.policy: unknown value {policy!r}; allowed: {', '.join(POLICIES)}")


def _check_fraction(fraction: float) -> None:
    if not 0 <= fraction < 1:
        raise ValueError(f"stragglers.fraction={fraction!r} is not allowed: must be in [0, 1)")


def choose_stragglers(seed: int, round: int, clients: list[int], fraction: float) -> list[int]:
    """The floor(fraction x M) stragglers among the round's M selected ``clients``, sorted.

    Raises:
        ValueError: ``fraction`` outside [0, 1).
    """
    _check_fraction(fraction)
    count = math.floor(fraction * len(clients))
    if count == 0:
        return []
    perm = torch.randperm(len(clients), generator=generator(seed, round, "stragglers"))[:count]
    return sorted(clients[i] for i in perm.tolist())


def straggler_steps(seed: int, round: int, client_id: int, num_samples: int, batch_size: int,
                    local_epochs: int, local_steps: int | None) -> int:
    """K_i of a straggler: e_i ~ U{1..E} epochs of ceil(n_i / B) steps, or U{1..K} steps
    when ``local_steps`` K is fixed."""
    gen = generator(seed, round, client_id, "straggler_epochs")
    if local_steps is not None:
        return 1 + int(torch.randint(local_steps, (), generator=gen))
    return steps_per_round(num_samples, batch_size, 1 + int(torch.randint(local_epochs, (), generator=gen)))


def plan_work(tasks: list[ClientTask], round: int, settings) -> list[ClientTask]:
    """Apply stragglers and early stopping to one synchronous round's tasks.

    Args:
        tasks: the round's tasks, one per selected client.
        round: t.
        settings: a :class:`~fedtorch.federation.planning.LocalWork` (``straggler_fraction``,
            ``straggler_policy``, ``early_stopping``, ``seed``, ``batch_size``,
            ``local_epochs``, ``local_steps``).

    Returns:
        The tasks to train: without the stragglers (``drop``), or with their K_i cut
        (``keep``); every context carries ``early_stopping``.

    Raises:
        ValueError: a fraction outside [0, 1) or an unknown policy.
    """
    s = settings
    check_stragglers(s.straggler_fraction, s.straggler_policy)
    late = set(choose_stragglers(s.seed, round, [t.ctx.client_id for t in tasks], s.straggler_fraction))
    planned = []
    for task in tasks:
        ctx = dataclasses.replace(task.ctx, early_stopping=s.early_stopping)
        if ctx.client_id in late:
            if s.straggler_policy == "drop":
                continue
            k = straggler_steps(s.seed, round, ctx.client_id, ctx.num_samples, s.batch_size, s.local_epochs, s.local_steps)
            ctx = dataclasses.replace(ctx, num_steps=min(k, ctx.num_steps))
        planned.append(ClientTask(ctx, task.indices))
    return planned
