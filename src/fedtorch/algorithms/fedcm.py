"""FedCM — Xu et al. 2021, "FedCM: Federated Learning with Client-level Momentum";
analysed as FedAvg-M by Cheng et al., ICLR 2024, "Momentum Benefits Non-IID Federated
Learning Simply and Provably".

The seed framework called this method "FedAVGM"; in fedtorch ``fedavgm`` is *server*
momentum (Hsu et al. 2019), and the seed's FedAVGM is ``fedcm``. Names are matched
case-insensitively, so ``FedAVGM`` selects ``fedavgm``: use ``fedcm`` for this method.

The server broadcasts, with x^t, last round's aggregate pseudo-gradient per local step
(zero in round 0)::

    Dbar^{t-1} = sum_i p_i Delta_i^{t-1} / (tau_i eta_l)

with tau_i = K_i (= Delta^{t-1} / (K eta_l) when every client takes K steps). Each local
step mixes it with the client's gradient::

    d = alpha g + (1 - alpha) Dbar^{t-1}

and the server rule is FedAvg's (any ``server.optimizer``). Dbar is computed once on
the server and broadcast (``broadcast.extra["dbar"]``); clients never recompute it. With
alpha = 1 it is FedAvg bit for bit. Default alpha = 0.1 (the paper's choice). The
aggregate uses the round's weights p_i (``federation.weighting``); FedCM has no client
state, so no population average defines its fixed point.

Client momentum (``client.momentum`` > 0, FedCM's own momentum on top of the client's
heavy ball): the mixed direction goes into the momentum buffer and Dbar divides each
Delta_i by the momentum-effective step count tau_i
(:meth:`~fedtorch.algorithms.base.LocalSGD.effective_steps`) instead of K_i, so Dbar stays
a per-step direction and Dbar^t = alpha gbar + (1 - alpha) Dbar^{t-1} contracts by
1 - alpha per round as without momentum. Dividing by K_i makes that factor about
(1 - alpha) / (1 - momentum) (9 at alpha 0.1, momentum 0.9): Dbar grows ninefold per
round and the run collapses to chance. Momentum 0 keeps the rule bit for bit.
"""

from dataclasses import dataclass

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check, weighted_mean
from fedtorch.algorithms.registry import register
from fedtorch.protocol import Broadcast, ClientMessage, LocalRun, ServerState, State


@dataclass(frozen=True, kw_only=True)
class FedCMHparams:
    """Attributes:
    alpha: weight of the client's own gradient, in (0, 1] (1 = FedAvg).
    """

    alpha: float = 0.1

    def __post_init__(self):
        check(0 < self.alpha <= 1, "alpha", self.alpha, "must be in (0, 1]")


@register
class FedCM(FedAlgorithm):
    name = "fedcm"
    paper = "Xu et al. 2021, FedCM: Federated Learning with Client-level Momentum"
    Hparams = FedCMHparams
    needs_federation = True

    def init_extra(self, x0: Tensor) -> State:
        """Dbar, the last round's average client direction: ``(P,)`` zeros."""
        return {"dbar": x0.new_zeros(x0.shape)}

    def broadcast(self, server: ServerState) -> Broadcast:
        """x^t and Dbar^{t-1} (``(P,)`` each)."""
        return Broadcast(x=server.x, extra={"dbar": server.extra["dbar"]})

    def direction(self, run: LocalRun, g: Tensor) -> Tensor:
        """d = alpha g + (1 - alpha) Dbar^{t-1}."""
        return self.hp.alpha * g + (1 - self.hp.alpha) * run.broadcast.extra["dbar"]

    def server_delta(self, server: ServerState, messages: ClientMessage, weights: Tensor) -> tuple[Tensor, State]:
        """Delta = sum p_i Delta_i; Dbar = sum p_i Delta_i / (tau_i eta_l) for next round."""
        steps = self.local.effective_steps(messages.num_steps.to(weights))
        dbar = weighted_mean(messages.delta, weights / (steps * self.federation.lr))
        return weighted_mean(messages.delta, weights), {"dbar": dbar}
