"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017, "Machine
Learning with Adversaries: Byzantine Tolerant Gradient Descent", the Krum and Multi-Krum rules).

With M proposals of which at most f are Byzantine, ``i -> j`` means ``x_j`` is one of the
``M - f - 2`` proposals closest to ``x_i`` (Euclidean, ``j != i``), and::

    score(i) = sum_{i -> j} ||x_i - x_j||^2
    Krum        = x_{i*},                       i* = argmin_i score(i)        (needs M > 2f + 2)
    Multi-Krum  = (1/m) sum_{i in best m} x_i,  the m rows with the lowest scores

The paper averages the m selected rows uniformly; so do we (checked: Flower's ``aggregate_krum``
weights them by sample count instead; epfml/byzantine-robust-optimizer ``codes/aggregator/krum.py``
returns their sum). Scores are computed once (not recomputed after each pick).
Ties are broken by the lower row index (stable sort), so the choice is deterministic.
Distances are computed in float64, one row at a time, as ``sum_k (x_ik - x_jk)^2``: exact up to
rounding and symmetric, with no ``|a|^2 + |b|^2 - 2ab`` cancellation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedtorch.robust._checks import check, check_count, check_stack, is_int
from fedtorch.robust.base import Aggregator, RobustAggregate, uniform_mean


def pairwise_sq_distances(deltas: torch.Tensor) -> torch.Tensor:
    """``(M, M)`` float64 matrix of ``||x_i - x_j||^2`` for ``deltas (M, P)``; memory O(M P)."""
    x = deltas.double()
    return torch.stack([(x - x[i]).square().sum(dim=1) for i in range(x.shape[0])])


def krum_scores(sq_dist: torch.Tensor, neighbours: int) -> torch.Tensor:
    """Krum scores ``(M,)``: for each row, the sum of its ``neighbours`` smallest squared
    distances to the *other* rows (Blanchard et al. 2017; ``neighbours = M - f - 2``).

    Args:
        sq_dist: ``(M, M)`` symmetric squared distances (:func:`pairwise_sq_distances`).
        neighbours: how many nearest other rows enter each score, ``1 <= neighbours <= M - 1``.
    """
    m = sq_dist.shape[0]
    others = sq_dist + torch.diag(torch.full((m,), float("inf"), dtype=sq_dist.dtype, device=sq_dist.device))
    return torch.sort(others, dim=1).values[:, :neighbours].sum(dim=1)


def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` lowest scores, ties to the lower index, in ascending score order."""
    return torch.sort(scores, stable=True).indices[:count]


def check_krum_cohort(f: int, num_clients: int) -> None:
    """Krum's condition of Blanchard et al. (2017): ``M > 2f + 2``."""
    check(
        num_clients > 2 * f + 2,
        "f",
        f,
        f"Krum needs M > 2f + 2 (Blanchard et al. 2017); with M={num_clients} clients use f <= {(num_clients - 3) // 2}",
    )


def multi_krum(deltas: torch.Tensor, f: int, m: int) -> RobustAggregate:
    """Select the ``m`` rows of lowest Krum score (``M - f - 2`` neighbours) and average them
    uniformly; the caller has checked ``M > 2f + 2`` and ``1 <= m <= M - f``."""
    scores = krum_scores(pairwise_sq_distances(deltas), deltas.shape[0] - f - 2)
    selected = torch.sort(lowest(scores, m)).values
    return RobustAggregate(uniform_mean(deltas[selected]), selected)


@dataclass(frozen=True)
class Krum(Aggregator):
    """Krum: the single row with the lowest score; ``value`` is that row, ``selected`` its id.

    Args:
        f: assumed number of Byzantine clients, an int >= 0.

    Raises:
        ValueError: ``robust.f`` not an int >= 0; at run time ``M <= 2f + 2``.
    """

    f: int = 1

    def __post_init__(self) -> None:
        check_count("f", self.f)

    def check_cohort(self, num_clients: int) -> None:
        """``M > 2f + 2``."""
        check_krum_cohort(self.f, num_clients)

    def apply(self, deltas: torch.Tensor, weights: torch.Tensor, state=None) -> RobustAggregate:
        """The lowest-score row (``weights`` ignored)."""
        self.check_cohort(check_stack(deltas, weights))
        return multi_krum(deltas, self.f, 1)


@dataclass(frozen=True)
class MultiKrum(Aggregator):
    """Multi-Krum: the uniform mean of the ``m`` rows with the lowest Krum scores.

    Args:
        f: assumed number of Byzantine clients, an int >= 0.
        m: rows averaged, ``1 <= m <= M - f``; ``None`` means ``M - f`` (the paper's experiments).
            The paper allows any m up to M; we refuse ``m > M - f``, where the pick could hold
            every Byzantine row by construction.

    Raises:
        ValueError: ``robust.f`` / ``robust.m`` not an int >= 0 / >= 1; at run time
            ``M <= 2f + 2`` or ``m > M - f``.
    """

    f: int = 1
    m: int | None = None

    def __post_init__(self) -> None:
        check_count("f", self.f)
        if self.m is not None:
            check(is_int(self.m) and self.m >= 1, "m", self.m, "must be an integer >= 1 (or None for M - f)")

    def rows(self, num_clients: int) -> int:
        """The number of averaged rows for ``num_clients`` clients."""
        return num_clients - self.f if self.m is None else self.m

    def check_cohort(self, num_clients: int) -> None:
        """``M > 2f + 2`` and ``1 <= m <= M - f``."""
        check_krum_cohort(self.f, num_clients)
        check(
            self.rows(num_clients) <= num_clients - self.f,
            "m",
            self.m,
            f"Multi-Krum averages at most M - f = {num_clients - self.f} rows (M={num_clients}, f={self.f})",
        )

    def apply(self, deltas: torch.Tensor, weights: torch.Tensor, state=None) -> RobustAggregate:
        """Select by Krum score and average the selected rows uniformly (``weights`` ignored)."""
        num_clients = check_stack(deltas, weights)
        self.check_cohort(num_clients)
        return multi_krum(deltas, self.f, self.rows(num_clients))
