"""FedAsync — Xie, Koyejo, Gupta 2019, "Asynchronous Federated Optimization", Algorithm 1.

A client starts from the global model x_tau of version tau and trains locally (SGD on
``f_i(y) + (rho/2) ||y - x_tau||^2``; rho = 0 is plain local SGD) and sends its local model
y_i. When it arrives at server version t the server mixes it in at once::

    a_t = alpha * s(t - tau)                  (s: a staleness weight, fedtorch.algorithms.staleness)
    x   <- (1 - a_t) x + a_t y_i              (server.round += 1 on every arrival)

The mixing weight is FedAsync's whole server step: ``server.optimizer`` is not used.
In synchronous rounds (every staleness 0) the rule mixes in the cohort's weighted mean model,
``x <- (1 - alpha) x + alpha sum_i p_i y_i``.

The message carries y_i (``model``) besides Delta_i = x_tau - y_i: the server needs the
model itself, and Delta_i alone cannot give it without x_tau.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check, proximal, weighted_mean
from fedtorch.algorithms.registry import register
from fedtorch.algorithms.staleness import check_staleness_hparams, staleness_weight
from fedtorch.protocol import ClientMessage, LocalRun, ServerState


@dataclass(frozen=True, kw_only=True)
class FedAsyncHparams:
    """Attributes:
    alpha: mixing weight alpha in (0, 1] (the paper tries several; 0.6 here).
    staleness: s: ``constant``, ``polynomial`` ((tau + 1)^-a) or ``hinge`` (1 up to b, then 1/(a (tau - b) + 1)).
    staleness_a: a of polynomial / hinge (the paper's hinge uses a = 10, b = 4).
    staleness_b: b of hinge.
    rho: the clients' proximal regulariser rho >= 0 (0: plain local SGD).
    """

    alpha: float = 0.6
    staleness: str = "polynomial"
    staleness_a: float = 0.5
    staleness_b: float = 4.0
    rho: float = 0.0

    def __post_init__(self):
        check(0 < self.alpha <= 1, "alpha", self.alpha, "must be in (0, 1]")
        check(self.rho >= 0, "rho", self.rho, "must be >= 0")
        check_staleness_hparams(self.staleness, self.staleness_a, self.staleness_b)


@dataclass
class ModelMessage(ClientMessage):
    """A :class:`ClientMessage` plus ``model``: ``(P,)`` the client's final local model y_i."""

    model: Tensor = None


@register
class FedAsync(FedAlgorithm):
    name = "fedasync"
    edge_reducible = True  # sync rounds mix in the mean model under p_i (fedtorch.edge_sums)
    paper = "Xie, Koyejo, Gupta 2019, Asynchronous Federated Optimization (arXiv:1903.03934)"
    Hparams = FedAsyncHparams

    def direction(self, run: LocalRun, g: Tensor) -> Tensor:
        """d = g + rho (y - x_tau): gradient of the regularised local objective."""
        return proximal(g, run.y, run.broadcast.x, self.hp.rho) if self.hp.rho else g

    def message(self, run: LocalRun, loss: float) -> ModelMessage:
        """Delta_i and the local model y_i."""
        return ModelMessage(**vars(super().message(run, loss)), model=run.y.clone())

    def mixing_weight(self, staleness: int) -> float:
        """a_t = alpha * s(staleness)."""
        hp = self.hp
        return hp.alpha * staleness_weight(hp.staleness, staleness, hp.staleness_a, hp.staleness_b)

    def apply_async(self, server: ServerState, message: ModelMessage, staleness: int) -> ServerState:
        """x <- (1 - a_t) x + a_t y_i; one new server version per arrival."""
        a = self.mixing_weight(staleness)
        return server.replace(x=(1 - a) * server.x + a * message.model, round=server.round + 1)

    def aggregate(self, server: ServerState, messages: ModelMessage, weights: Tensor) -> ServerState:
        """Synchronous rounds: x <- (1 - alpha) x + alpha sum_i p_i y_i (staleness 0)."""
        a = self.mixing_weight(0)
        return server.replace(x=(1 - a) * server.x + a * weighted_mean(messages.model, weights), round=server.round + 1)
