"""Federated least squares with unequal client sizes n_i and unequal local steps K_i, and
a builder that gives an algorithm the full :class:`FederationInfo` the runner fills in
(weighting, total samples, mean local steps). Shared by test_drift_weighting.py and
test_momentum_corrections.py."""

from __future__ import annotations

import torch

from fedtorch.algorithms import LocalSGD, get_algorithm
from fedtorch.protocol import FederationInfo

from simulate import ToyClient

SIZES = (6, 10, 20, 40, 14)  # n_i: rows of client i
STEPS = (1, 3, 5, 9, 2)  # K_i


def problem(sizes=SIZES, steps=STEPS, dim: int = 4, seed: int = 0):
    """Clients f_i(y) = ||A_i y - b_i||^2 / (2 n_i) in float64 with shifted b_i (non-IID).

    Returns (clients, optimum, L): ``optimum(weighting)`` is the minimiser of
    sum_i (n_i / n) f_i (``"samples"``) or (1/N) sum_i f_i (``"uniform"``); L is the
    largest client smoothness.
    """
    g = torch.Generator().manual_seed(seed)
    clients, parts, smooth = [], [], 0.0
    for i, (n, k) in enumerate(zip(sizes, steps)):
        a = torch.randn(n, dim, generator=g, dtype=torch.float64)
        b = torch.randn(n, generator=g, dtype=torch.float64) + 4.0 * (i - len(sizes) / 2)

        def grad(y, a=a, b=b, n=n):
            r = a @ y - b
            return 0.5 * (r @ r) / n, a.T @ r / n

        clients.append(ToyClient(grad, n, k))
        parts.append((a.T @ a / n, a.T @ b / n))
        smooth = max(smooth, torch.linalg.eigvalsh(a.T @ a / n).max().item())
    total = sum(sizes)

    def optimum(weighting: str) -> torch.Tensor:
        q = [n / total if weighting == "samples" else 1 / len(sizes) for n in sizes]
        hess = sum(qi * h for qi, (h, _) in zip(q, parts))
        rhs = sum(qi * r for qi, (_, r) in zip(q, parts))
        return torch.linalg.solve(hess, rhs)

    return clients, optimum, smooth


def info(clients, lr: float, weighting: str = "samples", mean_steps: bool = True) -> FederationInfo:
    """The FederationInfo the runner builds for these clients (``mean_steps=False``: a
    hand-built one without the schedule's mean K_i)."""
    mean = sum(c.num_steps for c in clients) / len(clients) if mean_steps else None
    return FederationInfo(len(clients), lr, weighting, sum(c.num_samples for c in clients), mean)


def build(name: str, federation: FederationInfo, local: LocalSGD | None = None, **hp):
    """Algorithm ``name`` with hyper-parameters ``hp``, client optimiser ``local``, default server."""
    cls = get_algorithm(name)
    return cls(cls.Hparams(**hp), local or LocalSGD(), None, federation)


def rel_error(x: torch.Tensor, target: torch.Tensor) -> float:
    return float((x - target).norm() / target.norm())
