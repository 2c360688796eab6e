"""Client sampling: which clients take part in a round."""

from __future__ import annotations

import torch

from fedtorch.seeding import generator


def sample_clients(seed: int, round: int, num_clients: int, clients_per_round: int) -> list[int]:
    """M distinct clients drawn uniformly without replacement, sorted by id.

    The draw depends only on ``(seed, round)`` (not on earlier rounds), so a resumed
    run selects the same clients as an uninterrupted one.

    Raises:
        ValueError: ``clients_per_round`` not in ``[1, num_clients]`` (:func:`check_clients_per_round`).
    """
    check_clients_per_round(clients_per_round, num_clients)
    if clients_per_round == num_clients:
        return list(range(num_clients))
    perm = torch.randperm(num_clients, generator=generator(seed, round, "client_sampling"))
    return sorted(perm[:clients_per_round].tolist())


def check_clients_per_round(clients_per_round: int, num_clients: int) -> None:
    """The one rule for M (``federation.clients_per_round``): 1 <= M <= N.

    Raises:
        ValueError: M outside ``[1, num_clients]``.
    """
    if not 1 <= clients_per_round <= num_clients:
        raise ValueError(f"federation.clients_per_round={clients_per_round!r} is not allowed: "
                         f"must be in [1, data.num_clients={num_clients}]")
