"""Who masks with whom: SecAgg's complete graph or SecAgg+'s sparse random Harary graph.

SecAgg (Bonawitz et al. CCS 2017, Sec. 4) pairs every client with every other one, so each
client agrees n - 1 keys and sends n - 1 shares. SecAgg+ (Bell et al. CCS 2020) replaces the
complete graph by a sparse random graph of degree k = O(log n); masks and Shamir shares are
exchanged along its edges only. The graph is H(n, k): nodes
on a ring after a uniformly random relabelling, each joined to its k/2 nearest ring neighbours
on either side, so it is exactly k-regular and connected. Checked against Google's
implementation (google-parfait/federated-compute, ``fcp/secagg/server/secret_sharing_harary_graph.h``):
the same ring of degree/2 predecessors and successors under a uniformly random permutation of
the ids, plus a self-edge, with an odd "degree" that counts it (their degree = our k + 1).
Their threshold comes from a parameter finder (``graph_parameter_finder.h``: security and
correctness parameters, dropout and adversary rates); ours is the configured fraction
``secagg.threshold`` of the k + 1 share holders. Which section of Bell et al. states the
construction was not checked.
"""

from __future__ import annotations

import torch

Graph = tuple[tuple[int, ...], ...]


def complete_graph(n: int) -> Graph:
    """``neighbours[u] = (0, ..., n-1) without u``."""
    return tuple(tuple(v for v in range(n) if v != u) for u in range(n))


def harary_graph(n: int, k: int, gen: torch.Generator) -> Graph:
    """A randomly relabelled Harary graph H(n, k), ``k`` even in [2, n - 1].

    Args:
        n: number of clients.
        k: degree (even); ``k >= 2 * ceil(log2 n)`` or so is the SecAgg+ regime.
        gen: the generator that draws the relabelling (the server's, public).

    Returns:
        ``neighbours[u]``: the sorted tuple of u's k neighbours.

    Raises:
        ValueError: ``k`` is odd or outside [2, n - 1].
    """
    if not (isinstance(k, int) and not isinstance(k, bool) and k % 2 == 0 and 2 <= k <= n - 1):
        raise ValueError(f"secagg.neighbours={k!r} is not allowed: an even degree in [2, num_clients-1={n - 1}]"
                         " (or null for the complete graph)")
    order = torch.randperm(n, generator=gen).tolist()  # ring position -> client
    pos = {c: p for p, c in enumerate(order)}
    return tuple(tuple(sorted(order[(pos[u] + d) % n] for d in range(-k // 2, k // 2 + 1) if d))
                 for u in range(n))
