"""The calling protocol of a robust aggregator, its result, and the plain weighted mean.

Every aggregator is a small frozen dataclass whose fields are its hyper-parameters (validated in
``__post_init__``) with three methods::

    check_cohort(num_clients)            # ValueError if the rule cannot run on M clients
    init_state(num_params, dtype)        # server state, a dict of tensors ({} if stateless)
    apply(deltas, weights, state=None)   # -> RobustAggregate(value, selected, state)

``deltas`` is ``(M, P)`` float (row i = client i's pseudo-gradient x^t - y_i), ``weights`` is
``(M,)`` (float64, summing to 1). ``apply`` never mutates its inputs, uses no randomness, and
returns the same bits for the same inputs. Accumulations run in float64 and the aggregate is
returned in ``deltas.dtype``.

**Weights.** Only :class:`Mean` uses them. The robust rules follow their papers, which treat every
worker alike (Blanchard et al. 2017, Yin et al. 2018, El Mhamdi et al. 2018, Karimireddy et al.
2021 all aggregate with 1/M or 1/m): ``weights`` are validated and otherwise ignored. This is
also the safe choice, since a weight is a sample count the client reports and a Byzantine client
could inflate it to dominate a weighted median or weighted trimmed mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedtorch.robust._checks import check_stack


@dataclass(frozen=True)
class RobustAggregate:
    """What an aggregator returns.

    Attributes:
        value: ``(P,)`` aggregate in ``deltas.dtype``.
        selected: sorted ``int64`` row ids whose rows entered ``value`` whole (Krum: 1 row,
            Multi-Krum: m rows, Bulyan: the theta rows of its Krum stage, mean: all rows), or
            ``None`` for rules that mix rows per coordinate or per clipping step.
        state: server state to pass to the next ``apply`` (``{}`` for stateless rules).
    """

    value: torch.Tensor
    selected: torch.Tensor | None = None
    state: dict[str, torch.Tensor] = field(default_factory=dict)


class Aggregator:
    """Base of every aggregator: the defaults "any M >= 1" and "no server state" (override either)."""

    def check_cohort(self, num_clients: int) -> None:
        """Raise ValueError if the rule cannot aggregate ``num_clients`` rows (here: any M >= 1)."""
        if num_clients < 1:
            raise ValueError(f"a robust aggregate needs at least one client, got M={num_clients}")

    def init_state(self, num_params: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """No server state."""
        return {}


def all_rows(m: int, device: torch.device) -> torch.Tensor:
    """``arange(m)`` as int64 on ``device``: every row was selected."""
    return torch.arange(m, dtype=torch.int64, device=device)


def uniform_mean(rows: torch.Tensor) -> torch.Tensor:
    """``(1/m) sum_i rows[i]`` accumulated in float64, returned in ``rows.dtype``."""
    return rows.double().mean(dim=0).to(rows.dtype)


@dataclass(frozen=True)
class Mean(Aggregator):
    """The non-robust baseline: ``sum_i weights[i] * deltas[i]`` (FedAvg's weighted mean)."""

    def apply(self, deltas: torch.Tensor, weights: torch.Tensor, state=None) -> RobustAggregate:
        """Weighted mean of the rows, weights used as given (they sum to 1 by contract)."""
        m = check_stack(deltas, weights)
        value = (weights.to(torch.float64) @ deltas.double()).to(deltas.dtype)
        return RobustAggregate(value, all_rows(m, deltas.device))
