"""FedBuff — Nguyen et al., AISTATS 2022, "Federated Learning with Buffered Asynchronous
Aggregation", Algorithm 1.

Clients run local SGD from the version tau they received and send Delta_i = x_tau - y_i.
The server scales each arriving update by a staleness weight, buffers it, and steps once K
updates are in the buffer::

    Delta_i <- s(t - tau_i) Delta_i                      (s default: 1 / sqrt(1 + tau))
    after the K-th arrival:  x <- ServerOpt(x, sum_i p_i Delta_i)   (SGD: x - eta_g ...)

so with uniform p_i = 1/K the step is eta_g times the mean of the K scaled updates, the
paper's rule; ``federation.weighting=samples`` (the default) weighs the buffer by n_i
instead. server.round counts buffer flushes.

The buffer is not kept here: it is the asynchronous loop's buffered server step
(:mod:`fedtorch.federation.server_steps`), which runs every synchronous algorithm this way;
FedBuff only supplies K (:meth:`FedBuff.buffer_size`) and s (:meth:`FedBuff.staleness_scale`)
and FedAvg's ``aggregate`` (any ``server.optimizer`` applies to the buffered mean). So
FedBuff in asynchronous mode is exactly ``algorithm.name=fedavg`` with ``federation.buffer_size=K``
and FedBuff's s, and in synchronous rounds (every staleness 0) it is FedAvg. The buffer holds
the K messages (K x P floats).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedtorch.algorithms.base import FedAlgorithm, check
from fedtorch.algorithms.registry import register
from fedtorch.algorithms.staleness import check_staleness_hparams, staleness_weight


@dataclass(frozen=True, kw_only=True)
class FedBuffHparams:
    """Attributes:
    buffer_size: K >= 1, updates per server step (the paper's experiments use 10).
    staleness: s: ``polynomial`` with a = 0.5 is the paper's 1/sqrt(1 + tau); also ``constant``, ``hinge``.
    staleness_a: a of polynomial / hinge.
    staleness_b: b of hinge.
    """

    buffer_size: int = 10
    staleness: str = "polynomial"
    staleness_a: float = 0.5
    staleness_b: float = 4.0

    def __post_init__(self):
        check(self.buffer_size >= 1, "buffer_size", self.buffer_size, "must be >= 1")
        check_staleness_hparams(self.staleness, self.staleness_a, self.staleness_b)


@register
class FedBuff(FedAlgorithm):
    name = "fedbuff"
    paper = "Nguyen et al., AISTATS 2022, Federated Learning with Buffered Asynchronous Aggregation"
    Hparams = FedBuffHparams

    def buffer_size(self, default: int) -> int:
        """K, updates per server step of the buffered asynchronous step (``default`` unused)."""
        return self.hp.buffer_size

    def staleness_scale(self, staleness: int) -> float:
        """s(staleness) applied to Delta_i before it enters the buffer (1.0 at staleness 0)."""
        hp = self.hp
        return staleness_weight(hp.staleness, staleness, hp.staleness_a, hp.staleness_b)
