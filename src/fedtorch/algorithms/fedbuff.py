"""FedBuff — Nguyen et al., AISTATS 2022, "Federated Learning with Buffered Asynchronous
Aggregation", Algorithm 1.

Clients run local SGD from the version they received and send Delta_i = x_tau - y_i. The
server adds each arriving update, scaled by a staleness weight, to a buffer, and steps once
K updates are in it::

    buffer <- buffer + s(t - tau) Delta_i / K          (s default: 1 / sqrt(1 + tau))
    after the K-th arrival:  x <- ServerOpt(x, buffer)  (SGD: x - eta_g buffer);  buffer <- 0

so the step is eta_g times the mean of the K scaled updates, and server.round counts
buffer flushes. The buffer is a running sum (P floats in ``server.extra``), so K does not
cost memory. Any ``server.optimizer`` applies to the buffered mean, as to FedAvg's Delta.

Equivalence: with zero delays and K = concurrency = M every buffer holds exactly one cohort
of M clients trained from the same x, with staleness 0, so FedBuff is FedAvg with uniform
weights. In synchronous rounds the rule is FedAvg's (``aggregate`` is not overridden).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check
from fedtorch.algorithms.registry import register
from fedtorch.algorithms.staleness import check_staleness_hparams, staleness_weight
from fedtorch.protocol import ClientMessage, ServerState, State


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

    def init_extra(self, x0: Tensor) -> State:
        """An empty buffer: ``buffer`` ``(P,)`` zeros and ``count`` (0-dim int64) 0."""
        return _empty_buffer(x0)

    def apply_async(self, server: ServerState, message: ClientMessage, staleness: int) -> ServerState:
        """Buffer s(staleness) Delta_i / K; on the K-th update step the server optimiser."""
        hp = self.hp
        weight = staleness_weight(hp.staleness, staleness, hp.staleness_a, hp.staleness_b) / hp.buffer_size
        buffer = server.extra["buffer"] + weight * message.delta
        count = server.extra["count"] + 1
        if int(count) < hp.buffer_size:
            return server.replace(extra={**server.extra, "buffer": buffer, "count": count})
        x, opt = self.server_optimizer.step(server.x, buffer, server.opt)
        return server.replace(x=x, opt=opt, extra={**server.extra, **_empty_buffer(x)}, round=server.round + 1)


def _empty_buffer(x: Tensor) -> dict[str, Tensor]:
    return {"buffer": torch.zeros_like(x), "count": torch.zeros((), dtype=torch.int64, device=x.device)}
