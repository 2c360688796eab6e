"""Feature-skew splits and the datasets' own (natural) split.

Noise-based feature skew changes the inputs, not just who holds them. Since every
training sample belongs to exactly one client, the data layer applies each client's
transform to that client's rows of the shared training tensor once, before training
(:func:`add_client_noise`): executors keep gathering ``train_x[indices]`` and need to
know nothing about it, and the test set stays clean.
"""

from __future__ import annotations

import numpy as np
import torch

from fedtorch.data.partition.common import PartitionError, check_at_least, check_clients, sorted_parts
from fedtorch.seeding import generator


def client_noise_sigmas(num_clients: int, noise_sigma: float) -> np.ndarray:
    """NIID-Bench's noise levels: client i's std is ``noise_sigma * i / (num_clients - 1)``
    (client 0 clean, the last client ``noise_sigma``).

    Returns:
        ``(num_clients,)`` float64.
    """
    return noise_sigma * np.arange(num_clients) / max(num_clients - 1, 1)


def add_client_noise(train_x: torch.Tensor, parts: list[np.ndarray], seed: int, noise_sigma: float) -> torch.Tensor:
    """Noise-based feature skew, Li et al., "Federated Learning on Non-IID Data Silos: An
    Experimental Study" (NIID-Bench), ICDE 2022, Sec. 3.2: client i's inputs get additive
    Gaussian noise ``N(0, sigma_i^2)`` with ``sigma_i`` from :func:`client_noise_sigmas`.

    The noise of client i comes from ``fedtorch.seeding.generator(seed, "feature_noise", i)``
    and is drawn once per sample (NIID-Bench redraws it at every read; a fixed draw keeps
    executors and resumed runs identical).

    Args:
        train_x: ``(N, ...)`` float inputs (not modified).
        parts: per-client index arrays.
        seed: ``data.seed``.
        noise_sigma: the largest std, in units of the normalised inputs.

    Returns:
        A new ``(N, ...)`` tensor; rows of no client are unchanged.

    Raises:
        PartitionError: negative sigma or non-float inputs (token ids cannot take noise).
    """
    check_at_least("noise_sigma", noise_sigma, 0)
    if not train_x.is_floating_point():
        raise PartitionError(f"partition=noise needs float inputs; this dataset's inputs are {train_x.dtype}")
    out = train_x.clone()
    for i, (idx, sigma) in enumerate(zip(parts, client_noise_sigmas(len(parts), noise_sigma))):
        if sigma > 0 and len(idx):
            rows = torch.from_numpy(idx)
            noise = torch.randn(out[rows].shape, generator=generator(seed, "feature_noise", i), dtype=out.dtype)
            out[rows] += float(sigma) * noise
    return out


def fcube_split(targets: np.ndarray, num_clients: int, seed: int, inputs: np.ndarray) -> list[np.ndarray]:
    """FCUBE feature skew, NIID-Bench (Li et al., ICDE 2022, Sec. 3.2 and 4): the planes
    x1 = 0, x2 = 0, x3 = 0 cut the cube into 8 octants; each pair of octants symmetric
    about the origin forms one group, so a group holds both classes (x1 > 0 and x1 < 0)
    but its own region of feature space. Group g = (sign(x1 x2), sign(x1 x3)) goes to
    clients ``g * m .. g * m + m - 1`` (``m = num_clients / 4``), IID among them.

    Args:
        inputs: ``(N, 3)`` points (the ``fcube`` dataset).

    Raises:
        PartitionError: inputs are not 3-D points, or ``num_clients`` is not a positive
            multiple of 4 (NIID-Bench uses 4).
    """
    x = np.asarray(inputs).reshape(len(inputs), -1)
    if x.shape[1] != 3:
        raise PartitionError(f"partition=fcube needs 3-D points (data.dataset=fcube); inputs have shape {x.shape[1:]}")
    if num_clients < 4 or num_clients % 4:
        raise PartitionError(f"partition=fcube needs data.num_clients a multiple of 4 (one or more per octant pair), got {num_clients}")
    s1 = np.where(x[:, 0] >= 0, 1, -1)
    group = 2 * (x[:, 1] * s1 < 0) + (x[:, 2] * s1 < 0)
    m, rng = num_clients // 4, np.random.default_rng(seed)
    parts = []
    for g in range(4):
        members = rng.permutation(np.flatnonzero(group == g))
        check_clients(len(members), m)
        parts += np.array_split(members, m)
    return sorted_parts(parts)


def natural(targets: np.ndarray, num_clients: int, seed: int, users: tuple[np.ndarray, ...] | None) -> list[np.ndarray]:
    """The dataset's own users as clients (LEAF, Caldas et al. 2018; FedProx Synthetic):
    all of them if ``num_clients`` equals their number, else ``num_clients`` users drawn
    at random with ``seed`` (in the dataset's order); other users' samples are left out.

    Raises:
        PartitionError: the dataset has no users, or fewer than ``num_clients``.
    """
    if users is None:
        raise PartitionError("data.partition=natural needs a dataset with its own users (femnist, shakespeare, synthetic)")
    if not 1 <= num_clients <= len(users):
        raise PartitionError(f"data.num_clients={num_clients} but the dataset has {len(users)} users; use 1..{len(users)}")
    chosen = range(len(users)) if num_clients == len(users) else np.sort(
        np.random.default_rng(seed).choice(len(users), num_clients, replace=False))
    return sorted_parts(users[u] for u in chosen)
