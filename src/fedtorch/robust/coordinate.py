"""Coordinate-wise median and trimmed mean (Yin, Chen, Ramchandran, Bartlett, ICML 2018,
"Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates").

Definition 1 (coordinate-wise median): ``g = med{x_i : i in [M]}`` with ``g_k`` the usual
one-dimensional median of ``{x_i^k}`` (for even M the mean of the two middle values, as
``numpy.median``).

Definition 2 (coordinate-wise trimmed mean, ``beta in [0, 1/2)``): for each coordinate k remove
the largest and the smallest ``beta`` fraction of ``{x_i^k}`` and average the rest::

    g_k = 1 / ((1 - 2 beta) M) * sum_{x in U_k} x,   |U_k| = M - 2b,   b = floor(beta * M)

(the paper takes ``beta M`` integral; like ``scipy.stats.trim_mean`` we cut ``b = int(beta M)``
values on each side). Its guarantee needs ``beta >= alpha``, the fraction of Byzantine clients;
the aggregator cannot know alpha, so choosing beta is the user's job (docs/robustness.md).

Both ignore ``weights`` (the paper's rule is unweighted; see :mod:`fedtorch.robust.base`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedtorch.robust._checks import check, check_number, check_stack
from fedtorch.robust.base import Aggregator, RobustAggregate


def coordinate_median(deltas: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median of ``deltas (M, P)`` -> ``(P,)`` in ``deltas.dtype``.

    For even M each coordinate is the mean of its two middle values (computed in float64).
    """
    m = deltas.shape[0]
    ordered = torch.sort(deltas, dim=0).values
    if m % 2 == 1:
        return ordered[m // 2].clone()
    return ((ordered[m // 2 - 1].double() + ordered[m // 2].double()) / 2).to(deltas.dtype)


def trim_count(beta: float, m: int) -> int:
    """Values cut on each side of each coordinate: ``int(beta * m)`` (as scipy.stats.trim_mean)."""
    return int(beta * m)


def coordinate_trimmed_mean(deltas: torch.Tensor, beta: float) -> torch.Tensor:
    """Coordinate-wise ``beta``-trimmed mean of ``deltas (M, P)`` -> ``(P,)`` (Yin et al., Def. 2)."""
    m = deltas.shape[0]
    b = trim_count(beta, m)
    kept = torch.sort(deltas, dim=0).values[b : m - b]
    return kept.double().mean(dim=0).to(deltas.dtype)


@dataclass(frozen=True)
class Median(Aggregator):
    """Coordinate-wise median (Yin et al. 2018, Def. 1); robust while fewer than half are Byzantine."""

    def apply(self, deltas: torch.Tensor, weights: torch.Tensor, state=None) -> RobustAggregate:
        """Median per coordinate; ``weights`` ignored, ``selected`` is None (rows mix per coordinate)."""
        check_stack(deltas, weights)
        return RobustAggregate(coordinate_median(deltas))


@dataclass(frozen=True)
class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean (Yin et al. 2018, Def. 2).

    Args:
        beta: fraction cut on each side, ``0 <= beta < 1/2``; must be at least the fraction of
            Byzantine clients for the paper's guarantee.

    Raises:
        ValueError: ``robust.beta`` outside ``[0, 1/2)``; at run time, ``beta > 0`` but
            ``int(beta * M) == 0`` (the trim would cut nothing).
    """

    beta: float = 0.1

    def __post_init__(self) -> None:
        check_number("beta", self.beta, "must be in [0, 0.5)", lambda b: 0 <= b < 0.5)

    def check_cohort(self, num_clients: int) -> None:
        """M >= 1, and a positive beta must cut at least one value per side (beta * M >= 1)."""
        super().check_cohort(num_clients)
        check(
            self.beta == 0 or trim_count(self.beta, num_clients) >= 1,
            "beta",
            self.beta,
            f"with M={num_clients} clients int(beta * M) = 0 values would be cut; need beta * M >= 1",
        )

    def apply(self, deltas: torch.Tensor, weights: torch.Tensor, state=None) -> RobustAggregate:
        """Trimmed mean per coordinate; ``weights`` ignored, ``selected`` is None."""
        m = check_stack(deltas, weights)
        self.check_cohort(m)
        return RobustAggregate(coordinate_trimmed_mean(deltas, self.beta))
