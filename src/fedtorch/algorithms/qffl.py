"""q-FFL (q-FedAvg) — Li, Sanjabi, Beirami, Smith, ICLR 2020, "Fair Resource Allocation
in Federated Learning", Algorithm 2.

Clients run FedAvg's local SGD. With F_i the client's loss at x^t and L = 1/eta_l
(the Lipschitz estimate of the paper), client i sends::

    Delta_i' = L Delta_i
    h_i      = q F_i^{q-1} ||Delta_i'||^2 + L F_i^q
    message  = (F_i^q Delta_i', h_i)

and the server steps, with the round's aggregation weights p_i::

    x^{t+1} = x^t - sum_i p_i F_i^q Delta_i' / sum_i p_i h_i

``sum_i p_i F_i^q Delta_i' / sum_i p_i h_i`` is the pseudo-gradient handed to
``server.optimizer`` (default SGD, lr 1). The paper's objective is
f_q = sum_k p_k F_k^{q+1} / (q + 1) with p_k = n_k / n. The authors' code
(github.com/litian96/fair_flearn) reaches it by *sampling*: ``run.sh`` passes
``--sampling``, and the README's q-FedAvg commands use 2, which
``flearn/trainers/fedbase.py`` ``select_clients`` implements as drawing clients with
probability proportional to n_k; ``aggregate2`` then sums the clients' (F^q Delta', h)
unweighted. fedtorch samples clients uniformly (``federation.clients_per_round``), so
it weights the two sums instead (importance weighting in place of weighted sampling):
``federation.weighting=samples`` (p_i proportional to n_i) targets the paper's f_q;
``uniform`` gives the plain sums, i.e. p_k = 1/N (what this module did whatever the
weighting, before). Equal weights cancel between numerator and denominator.

F_i is the loss of the client's first minibatch at x^t (the authors' code uses the loss
on the client's whole training set, ``qffedavg.py`` ``c.get_loss()``; a minibatch saves
a pass over the data), floored at 1e-10 so F^{q-1} stays finite (the code adds 1e-10).
With q = 0 it is FedAvg under the same weighting; larger q weights clients with high
loss more, lowering the spread of per-client accuracy. Norms are over the whole flat
vector (``norm_grad`` in ``flearn/utils/tf_utils.py`` flattens too). Default q = 1
(the README's Vehicle commands use q = 5; q is tuned per task).
"""

from dataclasses import dataclass

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check, norm, weighted_mean
from fedtorch.algorithms.registry import register
from fedtorch.protocol import ClientMessage, LocalRun, ServerState, State


@dataclass(frozen=True, kw_only=True)
class QFFLHparams:
    """Attributes:
    q: fairness exponent (>= 0; 0 = FedAvg).
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
    edge_reducible = True  # both sums, of F^q Delta' and of h, are means under p_i (fedtorch.edge_sums)
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
        """sum_i p_i F_i^q Delta_i' / sum_i p_i h_i (``(P,)``; ``weights`` p_i ``(M,)``)."""
        h = (weights.to(messages.h.dtype) * messages.h.reshape(-1)).sum()
        return weighted_mean(messages.delta, weights) / h, server.extra
