"""q-FFL (q-FedAvg) — Li, Sanjabi, Beirami, Smith, ICLR 2020, "Fair Resource Allocation
in Federated Learning", Algorithm 2.

Clients run FedAvg's local SGD. With F_i the client's loss at x^t and L = 1/eta_l
(the Lipschitz estimate of the paper), client i sends::

    Delta_i' = L Delta_i
    h_i      = q F_i^{q-1} ||Delta_i'||^2 + L F_i^q
    message  = (F_i^q Delta_i', h_i)

and the server, summing over the M clients (uniform by construction;
``federation.weighting`` is ignored), steps::

    x^{t+1} = x^t - sum_i F_i^q Delta_i' / sum_i h_i

``sum_i F_i^q Delta_i' / sum_i h_i`` is the pseudo-gradient handed to ``server.optimizer``
(default SGD, lr 1). F_i is the loss of the client's first minibatch at x^t (the paper
uses the full local training loss; a minibatch keeps it one extra backward per round),
floored at 1e-10 so F^{q-1} stays finite. With q = 0 it is FedAvg with uniform weights;
larger q weights clients with high loss more, lowering the spread of per-client
accuracy. Norms are over the whole flat vector. Default q = 1.
"""

from dataclasses import dataclass

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check, norm
from fedtorch.algorithms.registry import register
from fedtorch.protocol import ClientMessage, LocalRun, ServerState, State


@dataclass(frozen=True, kw_only=True)
class QFFLHparams:
    """Attributes:
    q: fairness exponent (>= 0; 0 = FedAvg with uniform weights).
    """

    q: float = 1.0

    def __post_init__(self):
        check(self.q >= 0, "q", self.q, "must be >= 0")


@dataclass
class QFFLMessage(ClientMessage):
    """``delta`` holds F_i^q L Delta_i; h: ``(1,)`` the client's h_i."""

    h: Tensor = None


@register
class QFFL(FedAlgorithm):
    name = "qffl"
    aliases = ("q-ffl", "qfedavg", "q-fedavg")
    paper = "Li, Sanjabi, Beirami, Smith, ICLR 2020, Fair Resource Allocation in Federated Learning"
    Hparams = QFFLHparams

    def direction(self, run: LocalRun, g: Tensor) -> Tensor:
        """FedAvg's direction; at k = 0 also records F_i, the first minibatch's loss at
        x^t (the step's own loss: no extra forward pass)."""
        if run.step == 0:
            run.buffers["F"] = run.loss.detach().reshape(run.y.shape[:-1] + (1,)).to(run.y.dtype)
        return g

    def finish_local(self, run: LocalRun, loss: float) -> tuple[ClientMessage, State]:
        """(F_i^q L Delta_i, h_i = q F_i^{q-1} ||L Delta_i||^2 + L F_i^q)."""
        base = self.message(run, loss)
        lip = 1.0 / run.ctx.lr
        scaled = lip * base.delta
        f = run.buffers["F"].clamp(min=1e-10)
        q = self.hp.q
        h = lip * f**q
        if q:
            h = h + q * f ** (q - 1) * norm(scaled) ** 2
        base.delta = f**q * scaled
        return QFFLMessage(**vars(base), h=h), run.state

    def server_delta(self, server: ServerState, messages: ClientMessage, weights: Tensor) -> tuple[Tensor, State]:
        """sum_i F_i^q Delta_i' / sum_i h_i."""
        return messages.delta.sum(dim=0) / messages.h.sum(), server.extra
