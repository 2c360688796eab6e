"""Label-skew splits: clients see different label distributions.

Dirichlet ("hetero-dir"), client-inner Dirichlet with fixed sizes, shards, label-quantity
#C=k, and FedProx's power-law split with k classes per client.
"""

from __future__ import annotations

import numpy as np

from fedtorch.data.partition.common import (
    PartitionError, apportion, check_at_least, check_clients, check_dirichlet, client_sizes, lognormal_weights, sorted_parts,
)


def _by_class(targets: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    classes = np.unique(targets)
    return classes, [np.flatnonzero(targets == k) for k in classes]


def dirichlet(
    targets: np.ndarray, num_clients: int, seed: int, alpha: float, min_samples: int = 10, max_draws: int = 1000
) -> list[np.ndarray]:
    """Dirichlet label skew ("hetero-dir"), Yurochkin et al., ICML 2019, "Bayesian
    Nonparametric Federated Learning of Neural Networks", Sec. 5; as in FedLab/NIID-Bench.

    For each class k, the class's samples are shared among clients in proportions
    q_k ~ Dir(alpha * 1_N); a client that already holds more than N / num_clients
    samples gets no further share (the usual balancing). The draw is repeated until
    every client has at least ``min_samples`` samples.

    Args:
        targets: ``(N,)`` integer labels.
        alpha: concentration > 0; small alpha = strong skew, large alpha = near IID.
        min_samples: minimum samples per client.
        max_draws: redraws before giving up.

    Raises:
        PartitionError: alpha <= 0, impossible minimum, or no valid draw in max_draws.
    """
    check_dirichlet("alpha", alpha)
    n = len(targets)
    check_clients(n, num_clients, min_samples)
    rng = np.random.default_rng(seed)
    _, by_class = _by_class(targets)
    for _ in range(max_draws):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for idx in by_class:
            idx = rng.permutation(idx)
            q = rng.dirichlet(np.full(num_clients, alpha))
            eligible = sizes < n / num_clients
            q = q * eligible
            total = q.sum()
            q = q / total if total > 0 else eligible / eligible.sum()  # all shares underflowed (tiny alpha)
            cuts = (np.cumsum(q) * len(idx)).astype(np.int64)[:-1]
            for i, chunk in enumerate(np.split(idx, cuts)):
                parts[i].append(chunk)
                sizes[i] += len(chunk)
        if sizes.min() >= min_samples:
            return [np.sort(np.concatenate(p)) for p in parts]
    raise PartitionError(
        f"Dirichlet split with alpha={alpha} gave some client fewer than {min_samples} samples in "
        f"{max_draws} draws; lower data.min_samples, raise data.alpha or lower data.num_clients"
    )


def client_inner_dirichlet(
    targets: np.ndarray, num_clients: int, seed: int, alpha: float, size_sigma: float = 0.0, min_samples: int = 1
) -> list[np.ndarray]:
    """Dirichlet label skew with fixed client sizes ("client-inner Dirichlet"): Acar et al.,
    "Federated Learning Based on Dynamic Regularization" (FedDyn), ICLR 2021, Sec. 5; FedLab's
    ``client_inner_dirichlet_partition``.

    Client sizes are fixed first (balanced, or log-normal with ``size_sigma`` as in
    :func:`~fedtorch.data.partition.quantity.iid_lognormal`); each client draws a class
    prior ``p_i ~ Dir(alpha * 1_C)``. Slots are then filled in random order: a slot of
    client i takes one sample of class ``k ~ p_i`` restricted to classes not yet used up
    (uniform over those if p_i gives them no mass). FedLab redraws k until it hits a
    class with samples left, which can loop for a long time; renormalising cannot.

    Returns:
        Every sample exactly once; client i has exactly its drawn size.

    Raises:
        PartitionError: alpha <= 0, negative sigma, or ``num_clients * min_samples > N``.
    """
    check_dirichlet("alpha", alpha)
    n, rng = len(targets), np.random.default_rng(seed)
    sizes = client_sizes(n, num_clients, min_samples, lognormal_weights(rng, num_clients, size_sigma))
    _, by_class = _by_class(targets)
    pools = [rng.permutation(idx) for idx in by_class]
    left = np.array([len(p) for p in pools])
    priors = rng.dirichlet(np.full(len(pools), alpha), size=num_clients)
    cum = np.cumsum(priors * (left > 0), axis=1)  # recomputed only when a class runs out
    slots = rng.permutation(np.repeat(np.arange(num_clients), sizes))
    draws = rng.random(n)
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for slot, (client, u) in enumerate(zip(slots, draws)):
        row = cum[client]
        if row[-1] > 0:
            k = min(int(np.searchsorted(row, u * row[-1], side="right")), len(pools) - 1)
        else:  # the client's prior has no mass on the classes left
            k = int(np.flatnonzero(left > 0)[int(u * np.count_nonzero(left > 0))])
        left[k] -= 1
        parts[client].append(pools[k][left[k]])
        if left[k] == 0:
            cum = np.cumsum(priors * (left > 0), axis=1)
    return sorted_parts(parts)


def shards(targets: np.ndarray, num_clients: int, seed: int, shards_per_client: int = 2) -> list[np.ndarray]:
    """Pathological non-IID shards, McMahan et al. 2017, Sec. 3: sort by label, cut
    into ``num_clients * shards_per_client`` shards (sizes differ by at most one),
    give each client ``shards_per_client`` random shards.

    Raises:
        PartitionError: more shards than samples.
    """
    n = len(targets)
    num_shards = num_clients * shards_per_client
    check_at_least("shards_per_client", shards_per_client, 1)
    check_clients(n, num_shards)
    order = np.argsort(targets, kind="stable")
    pieces = np.array_split(order, num_shards)
    assignment = np.random.default_rng(seed).permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in assignment]


def _check_k(classes: np.ndarray, k: int) -> None:
    if not 1 <= k <= len(classes):
        raise PartitionError(f"data.classes_per_client={k} is not possible: the data has {len(classes)} classes")


def _spread(class_index: list[np.ndarray], holders: list[list[int]], num_clients: int, amounts) -> list[list]:
    """Give each class's (shuffled) samples to its holders in the amounts ``amounts(c, h)``."""
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, (idx, who) in enumerate(zip(class_index, holders)):
        if not who:
            continue
        if len(idx) < len(who):
            raise PartitionError(
                f"class {c} has {len(idx)} samples for {len(who)} clients that must hold it; "
                "lower data.num_clients or data.classes_per_client"
            )
        for client, chunk in zip(who, np.split(idx, np.cumsum(amounts(c, who))[:-1])):
            parts[client].append(chunk)
    return parts


def label_quantity(targets: np.ndarray, num_clients: int, seed: int, classes_per_client: int = 2) -> list[np.ndarray]:
    """Label-quantity skew #C=k: NIID-Bench's "noniid-#label<k>", Li et al., "Federated
    Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022, Sec. 3.2.

    Client i holds class ``i mod C`` and ``k - 1`` further distinct classes drawn at
    random; each class's samples are shared equally (differing by at most one) among the
    clients holding it. Every client has exactly k classes. Samples of a class no client
    holds (only possible when ``num_clients < C``) are left out.

    Raises:
        PartitionError: k outside ``[1, C]``, or a class with fewer samples than holders.
    """
    rng = np.random.default_rng(seed)
    classes, by_class = _by_class(targets)
    k, num_classes = classes_per_client, len(classes)
    _check_k(classes, k)
    check_clients(len(targets), num_clients)
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for i in range(num_clients):
        first = i % num_classes
        others = rng.choice(np.delete(np.arange(num_classes), first), size=k - 1, replace=False)
        for c in (first, *others):
            holders[c].append(i)
    pools = [rng.permutation(idx) for idx in by_class]
    parts = _spread(pools, holders, num_clients, lambda c, who: apportion(len(pools[c]), np.ones(len(who))))
    return sorted_parts(np.concatenate(p) for p in parts)


def power_law(
    targets: np.ndarray, num_clients: int, seed: int, classes_per_client: int = 2, size_sigma: float = 2.0,
    min_samples: int = 10,
) -> list[np.ndarray]:
    """FedProx's pathological power-law split: Li et al., "Federated Optimization in
    Heterogeneous Networks", MLSys 2020, Sec. 5.1 (MNIST: 1000 devices, 2 digits each),
    after its ``generate_niid.py``.

    Client u holds the k consecutive classes ``(u + j) mod C``, ``j < k``. Each holder of
    a class first gets ``ceil(min_samples / k)`` of its samples; the rest of the class is
    shared in proportion to weights ``w_{u,j} ~ LogNormal(0, size_sigma)`` (FedProx: sigma
    2), which makes client sizes heavy-tailed. Unlike the original, which drops rounding
    leftovers, every sample of a held class is assigned; classes nobody holds (when
    ``num_clients + k - 1 < C``) are left out.

    Raises:
        PartitionError: k outside ``[1, C]``, negative sigma, or a class too small for the
            minimum of its holders.
    """
    rng = np.random.default_rng(seed)
    classes, by_class = _by_class(targets)
    k, num_classes = classes_per_client, len(classes)
    _check_k(classes, k)
    check_clients(len(targets), num_clients, min_samples)
    check_at_least("size_sigma", size_sigma, 0)
    per_class_min = -(-min_samples // k)
    weights = rng.lognormal(0.0, size_sigma, (num_clients, k))
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    slot_of: dict[tuple[int, int], int] = {}
    for u in range(num_clients):
        for j in range(k):
            holders[(u + j) % num_classes].append(u)
            slot_of[(u, (u + j) % num_classes)] = j
    pools = [rng.permutation(idx) for idx in by_class]
    for c, who in enumerate(holders):
        if who and len(pools[c]) < per_class_min * len(who):
            raise PartitionError(
                f"class {c} has {len(pools[c])} samples, fewer than {per_class_min} for each of its {len(who)} "
                "clients; lower data.min_samples or data.num_clients"
            )

    def amounts(c, who):
        w = np.array([weights[u, slot_of[(u, c)]] for u in who])
        return per_class_min + apportion(len(pools[c]) - per_class_min * len(who), w)

    parts = _spread(pools, holders, num_clients, amounts)
    return sorted_parts(np.concatenate(p) for p in parts)
