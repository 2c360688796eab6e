"""Scaffnew — Mishchenko et al., ICML 2022, "ProxSkip: Yes! Local Gradient Steps Provably
Lead to Communication Acceleration! Finally!", Algorithm 2 (Scaffnew, ProxSkip applied
to federated learning).

Client state h_i (zeros at first participation), step size gamma = eta_l, and ONE
communication probability p shared by every client. Local steps are shifted by h_i::

    y <- y - gamma (g - h_i)

The number of local steps per round is K ~ Geometric(p), one draw per round shared by
all clients (``random_steps=true``, the exact method), or the schedule's K_i
(``random_steps=false``, default). Averaging uses the round's weights p_i
(``federation.weighting``)::

    x^{t+1} = sum_{j in S} p_j (y_{j,K} - (gamma/p) h_j)
    h_i    <- h_i + (p/gamma) (x^{t+1} - y_{i,K})

Default p (``algorithm.p`` unset): 1 / ``FederationInfo.mean_local_steps``, the mean K_i
of the schedule over all N clients (so E[K] = mean K_i with random steps). Any shared p
keeps the invariant and the fixed point; p only sets the speed and the stability (the
h-update relaxes h_i by about p K_i per round: with p K_i well above 2 it diverges).
A per-client p_i = 1/K_i, as fedtorch used before, breaks sum_i p_i h_i = 0 when the
K_i differ and converges to a wrong point. When the mean is unknown (a hand-built
FederationInfo) and p is unset, the constructor raises ValueError.

Client i sends Delta_i = x^t - xhat_i with xhat_i = y_{i,K} - (gamma/p) h_i, so
sum_j p_j Delta_j = x^t - x^{t+1} and the default ``server.optimizer`` (SGD, lr 1) lands
exactly on x^{t+1}. Since h_i + (p/gamma)(x^{t+1} - y_{i,K}) = (p/gamma)(x^{t+1} -
xhat_i), the client keeps xhat_i and p/gamma after training and ``after_aggregate``
turns them into its new h_i once x^{t+1} exists. Hence sum_{i in S} p_i h_i^+ = 0 after
every round; with full participation that is sum_i p_i h_i = 0 over all clients, and at
the fixed point h_i = grad f_i(x*), so sum_i p_i grad f_i(x*) = 0: the objective
``federation.weighting`` names (sample-weighted or uniform). Partial participation is a
heuristic (the paper averages every client): the cohort's h_i are re-centred among
themselves, the others keep theirs, so the population sum drifts and the fixed point is
not guaranteed.

Client momentum: the shifted gradient g - h_i goes into the momentum buffer (heavy ball
on f_i - <h_i, y>, whose gradient vanishes at the optimum), and gamma in gamma/p is
replaced by the heavy ball's mean step over 1/p steps, gamma p tau(1/p)
(:meth:`~fedtorch.algorithms.base.LocalSGD.effective_steps`): gamma/p becomes
gamma tau(1/p), shared by every client so the invariant holds. With gamma/p unchanged the
h-update over-relaxes by about 1/(1 - momentum) and diverges. Momentum 0 keeps the
paper's rule bit for bit. Memory: one P-vector per client between rounds.
(The seed framework used an exponential average of x - y as h_i; this is the paper's.)
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check, weighted_mean
from fedtorch.algorithms.registry import register
from fedtorch.protocol import ClientMessage, LocalRun, ServerState, State
from fedtorch.seeding import generator


@dataclass(frozen=True, kw_only=True)
class ScaffnewHparams:
    """Attributes:
    random_steps: draw K ~ Geometric(p) every round (the exact ProxSkip method).
    p: communication probability in (0, 1], shared by every client; None: 1 / the
        schedule's mean K_i (``FederationInfo.mean_local_steps``).
    """

    random_steps: bool = False
    p: float | None = None

    def __post_init__(self):
        check(self.p is None or (isinstance(self.p, (int, float)) and 0 < self.p <= 1), "p", self.p,
              "must be null (1 / mean local steps) or a number in (0, 1]")


@register
class Scaffnew(FedAlgorithm):
    name = "scaffnew"
    edge_reducible = True  # x^{t+1} from the mean Delta under p_i (fedtorch.edge_sums)
    aliases = ("proxskip",)
    paper = "Mishchenko et al., ICML 2022, ProxSkip: Yes! Local Gradient Steps Provably Lead to Communication Acceleration! Finally!"
    Hparams = ScaffnewHparams
    state_vectors = 1

    def __init__(self, hparams=None, local=None, server_optimizer=None, federation=None):
        super().__init__(hparams, local, server_optimizer, federation)
        mean = federation.mean_local_steps if federation is not None else None
        if self.hp.p is not None:
            self.p = float(self.hp.p)
        elif mean is not None:
            check(mean >= 1, "p", None, f"defaults to 1 / mean local steps, but the mean is {mean!r} (< 1)")
            self.p = 1.0 / mean
        else:
            raise ValueError("scaffnew: algorithm.p is unset and FederationInfo.mean_local_steps is unknown; set "
                             "algorithm.p in (0, 1] (one communication probability shared by every client) or pass "
                             "FederationInfo(mean_local_steps=...)")

    def num_local_steps(self, round: int, client_id: int, seed: int, default: int) -> int:
        """K ~ Geometric(p) on {1, 2, ...} from (seed, round) when ``random_steps``."""
        if not self.hp.random_steps:
            return default
        u = torch.rand((), generator=generator(seed, round, "local_steps"), dtype=torch.float64).item()
        return 1 + int(math.log1p(-u) / math.log1p(-self.p))

    def init_client(self, x0: Tensor) -> State:
        """The client's control variate h_i: ``(P,)`` zeros."""
        return {"h": x0.new_zeros(x0.shape)}

    def direction(self, run: LocalRun, g: Tensor) -> Tensor:
        """d = g - h_i (the step is y - gamma d)."""
        return g - run.state["h"]

    def gamma_over_p(self, run: LocalRun):
        """gamma / p (momentum 0), gamma tau(1/p) with momentum. A number, or ``(C, 1)``
        when vectorised."""
        if not self.local.momentum:
            return run.ctx.lr / self.p
        return run.ctx.lr * self.local.effective_steps(1.0 / self.p)

    def finish_local(self, run: LocalRun, loss: float) -> tuple[ClientMessage, State]:
        """xhat_i = y_K - (gamma/p) h_i; sends Delta_i = x^t - xhat_i; keeps xhat_i, p/gamma."""
        gamma_over_p = self.gamma_over_p(run)
        xhat = run.y - gamma_over_p * run.state["h"]
        message = self.message(run, loss)
        message.delta = run.broadcast.x - xhat
        return message, {"xhat": xhat, "coef": run.y.new_ones(run.y.shape[:-1] + (1,)) / gamma_over_p}

    def after_aggregate(self, server: ServerState, state: State) -> State:
        """h_i = (p/gamma)(x^{t+1} - xhat_i)."""
        return {"h": state["coef"] * (server.x - state["xhat"])}

    def server_delta(self, server: ServerState, messages: ClientMessage, weights: Tensor) -> tuple[Tensor, State]:
        """x^t - x^{t+1} = sum_j p_j Delta_j (the round's weights)."""
        return weighted_mean(messages.delta, weights), server.extra
