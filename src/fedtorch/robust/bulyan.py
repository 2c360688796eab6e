"""Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018, "The Hidden Vulnerability of Distributed
Learning in Byzantium", the rule Bulyan(A) with A = Krum).

With M proposals, at most f Byzantine, and ``M >= 4f + 3``:

1. Selection: ``theta = M - 2f`` times, apply Krum to the proposals not yet selected (same f)
   and move the row it picks into the selection set S.
2. Aggregation: with ``beta = theta - 2f``, for each coordinate k::

       g_k = (1/beta) sum_{x in M_k} x_k,
       M_k = argmin_{|M| = beta, M subset S} sum_{x in M} |x_k - median_k(S)|

   i.e. the mean of the beta values of coordinate k closest to S's coordinate-wise median.

Inside the recursion Krum's neighbour count ``|remaining| - f - 2`` falls below 1 in the last
steps (at the end ``|remaining| = 2f + 1``); like Flower's ``aggregate_bulyan`` +
``aggregate_krum`` (checked in adap/flower ``strategy/aggregate.py``) we then use 1 neighbour.
Near the end of the recursion Krum runs on fewer than 2f + 3 rows and may pick a Byzantine row
(tests/test_robust.py builds such a case); S still holds at most f Byzantine rows, and the
aggregation step keeps per coordinate only the beta = theta - 2f values nearest the median.

The authors' own code (LPD-EPFL/AggregaThor, ``native/op_bulyan/cpu.cpp``, checked) implements a
variant, "Bulyan over Multi-Krum": theta = M - 2f - 2, each selected vector is the average of the
Multi-Krum pick rather than one row, scores are updated incrementally instead of recomputed, and
the median is the upper middle value. We follow the paper's text. Ties (equal scores, equal
distances to the median) go to the lower row index. ``weights`` are ignored, as in the paper.
With f = 0 Bulyan is the plain uniform mean of all rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedtorch.robust._checks import check, check_count, check_stack
from fedtorch.robust.base import Aggregator, RobustAggregate
from fedtorch.robust.coordinate import coordinate_median
from fedtorch.robust.krum import krum_scores, lowest, pairwise_sq_distances


def recursive_krum(deltas: torch.Tensor, f: int, count: int) -> torch.Tensor:
    """Row ids picked by ``count`` rounds of Krum on the not-yet-picked rows, in pick order."""
    sq_dist = pairwise_sq_distances(deltas)
    remaining = torch.arange(deltas.shape[0], device=deltas.device)
    picked = []
    for _ in range(count):
        sub = sq_dist[remaining][:, remaining]
        best = int(lowest(krum_scores(sub, max(1, remaining.numel() - f - 2)), 1))
        picked.append(remaining[best])
        remaining = torch.cat([remaining[:best], remaining[best + 1 :]])
    return torch.stack(picked)


def closest_to_median_mean(rows: torch.Tensor, beta: int) -> torch.Tensor:
    """Per coordinate, the mean of the ``beta`` values closest to the coordinate median (float64)."""
    x = rows.double()
    gap = (x - coordinate_median(x)).abs()
    nearest = torch.sort(gap, dim=0, stable=True).indices[:beta]
    return torch.gather(x, 0, nearest).mean(dim=0).to(rows.dtype)


@dataclass(frozen=True)
class Bulyan(Aggregator):
    """Bulyan over Krum.

    Args:
        f: assumed number of Byzantine clients, an int >= 0.

    Raises:
        ValueError: ``robust.f`` not an int >= 0; at run time ``M < 4f + 3``.
    """

    f: int = 1

    def __post_init__(self) -> None:
        check_count("f", self.f)

    def check_cohort(self, num_clients: int) -> None:
        """El Mhamdi et al. (2018) require ``M >= 4f + 3``."""
        check(
            num_clients >= 4 * self.f + 3,
            "f",
            self.f,
            f"Bulyan needs M >= 4f + 3 (El Mhamdi et al. 2018); with M={num_clients} clients use f <= {(num_clients - 3) // 4}",
        )

    def apply(self, deltas: torch.Tensor, weights: torch.Tensor, state=None) -> RobustAggregate:
        """Krum-select theta = M - 2f rows, then average the beta = theta - 2f values nearest the
        median per coordinate. ``selected`` holds the theta rows of the first stage."""
        num_clients = check_stack(deltas, weights)
        self.check_cohort(num_clients)
        theta = num_clients - 2 * self.f
        picked = recursive_krum(deltas, self.f, theta)
        value = closest_to_median_mean(deltas[picked], theta - 2 * self.f)
        return RobustAggregate(value, torch.sort(picked).values)
