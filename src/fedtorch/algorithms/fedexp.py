"""FedExP — Jhunjhunwala, Wang, Joshi, ICLR 2023, "FedExP: Speeding Up Federated
Averaging via Extrapolation", Algorithm 1.

Clients run FedAvg's local SGD. The server averages with uniform weights (the paper's
rule; ``federation.weighting`` is ignored) and extrapolates with an adaptive step::

    Delta   = (1/M) sum_i Delta_i
    eta_g^t = max(1, sum_i ||Delta_i||^2 / (2 M (||Delta||^2 + eps)))
    x^{t+1} = x^t - eta_g^t Delta

Norms are over the whole flat parameter vector (the seed framework took them per
tensor). ``eta_g^t Delta`` is the pseudo-gradient handed to ``server.optimizer``
(default SGD with lr 1, i.e. exactly the rule above). The paper reports the average of
the last two global iterates; ``eval_average_last_two=true`` evaluates
(x^{t+1} + x^t) / 2 on the test set (training continues from x^{t+1}).
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check, uniform_mean
from fedtorch.algorithms.registry import register
from fedtorch.protocol import ClientMessage, ServerState, State


@dataclass(frozen=True, kw_only=True)
class FedExPHparams:
    """Attributes:
    eps: epsilon >= 0 in the step-size denominator (paper default 1e-3).
    eval_average_last_two: evaluate the mean of the last two global iterates.
    """

    eps: float = 1e-3
    eval_average_last_two: bool = False

    def __post_init__(self):
        check(self.eps >= 0, "eps", self.eps, "must be >= 0")


def extrapolation(deltas: Tensor, eps: float, mean: Tensor | None = None) -> Tensor:
    """eta_g = max(1, sum_i ||Delta_i||^2 / (2 M (||mean Delta||^2 + eps))), a 0-d tensor
    (Jhunjhunwala et al. 2023, Algorithm 1).

    Args:
        deltas: ``(M, P)`` client updates.
        eps: the paper's epsilon (>= 0).
        mean: ``(P,)`` their uniform mean, if already computed.
    """
    mean = uniform_mean(deltas) if mean is None else mean
    ratio = torch.linalg.vector_norm(deltas).square() / (2 * deltas.shape[0] * (mean.square().sum() + eps))
    return ratio.clamp(min=1.0)


@register
class FedExP(FedAlgorithm):
    name = "fedexp"
    paper = "Jhunjhunwala, Wang, Joshi, ICLR 2023, FedExP: Speeding Up Federated Averaging via Extrapolation"
    Hparams = FedExPHparams

    def server_delta(self, server: ServerState, messages: ClientMessage, weights: Tensor) -> tuple[Tensor, State]:
        """eta_g^t * (1/M) sum_i Delta_i; keeps x^t for the two-iterate average."""
        extra = {"prev_x": server.x} if self.hp.eval_average_last_two and server.round > 0 else {}
        mean = uniform_mean(messages.delta)
        return extrapolation(messages.delta, self.hp.eps, mean) * mean, extra

    def eval_model(self, server: ServerState) -> Tensor:
        """(x^{t+1} + x^t) / 2 with ``eval_average_last_two`` (after round 1), else x^{t+1}."""
        prev = server.extra.get("prev_x")
        return server.x if prev is None else (server.x + prev) / 2
