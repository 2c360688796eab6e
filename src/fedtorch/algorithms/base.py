"""Default hooks shared by every algorithm: FedAvg's client and server rules.

An algorithm file subclasses :class:`FedAlgorithm` once and overrides only the hooks
its paper changes (FedProx: :meth:`~FedAlgorithm.direction`; SCAFFOLD: direction,
``finish_local`` and ``server_delta``; ...). The local optimiser (SGD with momentum and
weight decay) and the server optimiser are parameters, not subclasses.

Server side, :meth:`FedAlgorithm.aggregate` is always "pseudo-gradient, then server
optimiser": an algorithm with its own server rule overrides :meth:`~FedAlgorithm.server_delta`
(which returns the pseudo-gradient and its new algorithm state) and keeps composing with
every ``server.optimizer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from fedtorch.algorithms.hparams import check  # noqa: F401  (algorithms import it from here)
from fedtorch.algorithms.server_optimizers import ServerOptimizer, make_server_optimizer
from fedtorch.protocol import Broadcast, ClientMessage, FederationInfo, LocalRun, Personalization, ServerState, State


@dataclass(frozen=True, kw_only=True)
class LocalSGD:
    """The client optimiser: SGD with heavy-ball momentum and L2 weight decay.

    Matches ``torch.optim.SGD(lr, momentum, weight_decay)`` (dampening 0, no Nesterov):
    ``d' = d + weight_decay * y``; ``b = momentum * b + d'`` (``b = d'`` at k = 0);
    ``y <- y - lr * b``. The momentum buffer is reset every round.

    How a gradient correction composes with momentum (one rule for every method):
    the algorithm's whole direction d (gradient plus correction) goes *into* the buffer,
    and a client state that is estimated from the displacement x^t - y_{i,K} (SCAFFOLD's
    c_i, option II; Scaffnew's h_i; FedCM's Dbar) divides it by
    :meth:`effective_steps` instead of K_i: the heavy-ball displacement along a constant
    d after K steps is ``lr * effective_steps(K) * d``, not ``lr * K * d``. Dividing by K
    (what SCAFFOLD's option II does without momentum) over-counts the per-step direction
    by about 1/(1 - momentum); fed back through the buffer next round, that factor
    compounds and the run diverges (SCAFFOLD, FedCM at momentum 0.9). Applying the
    correction after the momentum step instead (NIID-Bench's SCAFFOLD, ``experiments.py``
    ``train_net_scaffold``: ``w <- w - lr (c - c_i)`` after ``optimizer.step()``) keeps
    the amplified gradient against an unamplified correction and misses the optimum: on
    the federated least squares of tests/test_momentum_corrections.py (momentum 0.9,
    partial participation) it ends at a relative error of about 70, while this rule
    reaches the optimum to 1e-6. Corrections that are gradients of a local
    objective (FedProx's and DualProx's proximal terms, FedDyn's linear and proximal
    terms) need nothing more: momentum is then just the local solver.
    """

    momentum: float = 0.0
    weight_decay: float = 0.0

    def effective_steps(self, k):
        """tau(K) = sum_{j<K} (1 - m^{j+1}) / (1 - m): the displacement of K heavy-ball
        steps along a constant direction, in units of ``lr`` (m = momentum).

        Equals K at m = 0 (returned unchanged, so momentum-free rules keep their bits)
        and FedNova's a_i for momentum SGD, (K - m (1 - m^K) / (1 - m)) / (1 - m), otherwise
        (Wang et al., NeurIPS 2020; the formula NIID-Bench's ``train_net_fednova`` uses). ``k``: a number, or a ``(C, 1)`` float tensor.
        """
        m = self.momentum
        if not m:
            return k
        return (k - m * (1 - m ** k) / (1 - m)) / (1 - m)


@dataclass(frozen=True, kw_only=True)
class NoHparams:
    """Hyper-parameters of an algorithm that has none beyond the shared ones."""


class FedAlgorithm:
    """Base class: every hook with its FedAvg default (McMahan et al. 2017, Alg. 1).

    Args:
        hparams: the algorithm's frozen hyper-parameter dataclass (``cls.Hparams``).
        local: the client optimiser (:class:`LocalSGD`).
        server_optimizer: the server rule applied to the pseudo-gradient (default: the
            class's ``server_defaults``, else ``ServerSGD(lr=1)``).
        federation: N and eta_l, for algorithms that need them (``needs_federation``).

    Raises:
        ValueError: ``federation`` missing for an algorithm that needs it.

    Subclasses set ``name``, ``paper``, ``Hparams`` (and optionally ``aliases``,
    ``server_defaults``, ``state_vectors``) and override hooks.
    See :mod:`fedtorch.protocol` for the calling protocol and tensor shapes.
    """

    name: ClassVar[str] = "base"
    paper: ClassVar[str] = ""
    Hparams: ClassVar[type] = NoHparams
    aliases: ClassVar[tuple[str, ...]] = ()
    server_defaults: ClassVar[dict] = {}  # e.g. {"optimizer": "adam"}: defaults for server.*
    state_vectors: ClassVar[int] = 0  # persistent (P,) vectors per client: memory P x 4 x this
    needs_federation: ClassVar[bool] = False
    # The server rule reads the messages only through weighted means of their vector
    # fields, so an edge may send a partial sum (fedtorch.edge_sums). True for the base
    # rule; a subclass that overrides aggregate or server_delta gets False unless it
    # declares it itself (SCAFFOLD, FedDyn).
    edge_reducible: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own_rule = any(name in vars(cls) for name in ("aggregate", "server_delta"))
        if own_rule and "edge_reducible" not in vars(cls):
            cls.edge_reducible = False

    def __init__(
        self,
        hparams=None,
        local: LocalSGD | None = None,
        server_optimizer: ServerOptimizer | None = None,
        federation: FederationInfo | None = None,
    ):
        self.hp = hparams if hparams is not None else self.Hparams()
        self.local = local or LocalSGD()
        if server_optimizer is None:
            defaults = dict(self.server_defaults)
            server_optimizer = make_server_optimizer(defaults.pop("optimizer", "sgd"), **defaults)
        self.server_optimizer = server_optimizer
        if self.needs_federation and federation is None:
            raise ValueError(f"algorithm {self.name!r} needs federation=FederationInfo(num_clients, lr)")
        self.federation = federation

    # ---- server state -------------------------------------------------------------
    def init_server(self, x0: Tensor) -> ServerState:
        """Server state at round 0 for the initial model ``x0`` (``(P,)``)."""
        return ServerState(x=x0.clone(), opt=self.server_optimizer.init(x0), extra=self.init_extra(x0))

    def init_extra(self, x0: Tensor) -> State:
        """The algorithm's own server state at round 0 (none for FedAvg)."""
        return {}

    def init_client(self, x0: Tensor) -> State:
        """Persistent state of a client at its first participation (none for FedAvg).

        The federation loop calls it with the *current* global model x^t.
        """
        return {}

    def broadcast(self, server: ServerState) -> Broadcast:
        """What every selected client receives: x^t (plus algorithm extras)."""
        return Broadcast(x=server.x)

    def num_local_steps(self, round: int, client_id: int, seed: int, default: int) -> int:
        """K_i for this round; ``default`` is the schedule's (epochs or fixed steps)."""
        return default

    # ---- client hooks -------------------------------------------------------------
    def init_local(self, run: LocalRun) -> Tensor:
        """y_{i,0}: the global model x^t."""
        return run.broadcast.x

    def perturb(self, run: LocalRun) -> Tensor | None:
        """Point where the gradient is taken; None means at y (no perturbation)."""
        return None

    def direction(self, run: LocalRun, g: Tensor) -> Tensor:
        """Descent direction from the minibatch gradient g (``(P,)``): g itself."""
        return g

    def local_step(self, run: LocalRun, d: Tensor) -> None:
        """y <- y - eta_l * SGD(d) in place (see :class:`LocalSGD`)."""
        self.sgd_step(run, d, run.ctx.lr)

    def sgd_step(self, run: LocalRun, d: Tensor, lr) -> None:
        """y <- y - lr * b with b the momentum buffer of d + weight_decay * y."""
        d = self.with_weight_decay(run, d, self.local.weight_decay)
        if self.local.momentum:
            buf = run.buffers.get("momentum")
            if buf is None:
                buf = run.buffers["momentum"] = d.clone()
            else:
                buf.mul_(self.local.momentum).add_(d)
            d = buf
        if isinstance(lr, Tensor):
            run.y.sub_(lr * d)
        else:
            run.y.add_(d, alpha=-lr)

    @staticmethod
    def with_weight_decay(run: LocalRun, d: Tensor, weight_decay: float) -> Tensor:
        """d + weight_decay * y (d itself when weight_decay is 0)."""
        return d + weight_decay * run.y if weight_decay else d

    def finish_local(self, run: LocalRun, loss: float) -> tuple[ClientMessage, State]:
        """Message Delta_i = x^t - y_{i,K_i}; the persistent state is unchanged."""
        return self.message(run, loss), run.state

    def message(self, run: LocalRun, loss: float) -> ClientMessage:
        """The default :class:`ClientMessage` of a finished local run."""
        return ClientMessage(
            delta=run.broadcast.x - run.y,
            num_samples=run.ctx.num_samples,
            num_steps=run.ctx.num_steps,
            loss=loss,
        )

    # ---- server rule --------------------------------------------------------------
    def aggregate(self, server: ServerState, messages: ClientMessage, weights: Tensor) -> ServerState:
        """x^{t+1} = ServerOpt(x^t, pseudo-gradient) with the pseudo-gradient from
        :meth:`server_delta`.

        Args:
            server: the current state.
            messages: stacked messages, ``messages.delta`` is ``(M, P)``.
            weights: ``(M,)`` aggregation weights p_i summing to 1.
        """
        delta, extra = self.server_delta(server, messages, weights)
        x, opt = self.server_optimizer.step(server.x, delta, server.opt)
        return server.replace(x=x, opt=opt, extra=extra, round=server.round + 1)

    def server_delta(self, server: ServerState, messages: ClientMessage, weights: Tensor) -> tuple[Tensor, State]:
        """The pseudo-gradient ``(P,)`` and the new algorithm state: Delta = sum_i p_i Delta_i."""
        return weighted_mean(messages.delta, weights), server.extra

    def after_aggregate(self, server: ServerState, state: State) -> State:
        """A participating client's persistent state once x^{t+1} exists (unchanged)."""
        return state

    # ---- evaluation -----------------------------------------------------------------
    def eval_model(self, server: ServerState) -> Tensor:
        """The model the test set evaluates: x^t."""
        return server.x

    def personalization(self) -> Personalization | None:
        """How per-client evaluation personalises the global model (None: it does not)."""
        return None


def weighted_mean(stacked: Tensor, weights: Tensor) -> Tensor:
    """sum_i w_i * stacked[i] for ``stacked`` ``(M, P)`` and ``weights`` ``(M,)``.

    A fixed-order reduction (not a BLAS gemv) so the result does not depend on
    threading: the same inputs give the same bits under every executor.
    """
    return (weights.to(stacked.dtype).unsqueeze(-1) * stacked).sum(dim=0)


def uniform_mean(stacked: Tensor) -> Tensor:
    """(1/M) sum_i stacked[i]: the unweighted mean over the leading dimension."""
    return stacked.sum(dim=0) / stacked.shape[0]


def norm(t: Tensor) -> Tensor:
    """Euclidean norm over the flat parameter vector: ``(P,) -> (1,)``, ``(C, P) -> (C, 1)``."""
    return t.norm(dim=-1, keepdim=True)


def along(v: Tensor, radius: float) -> Tensor:
    """``radius * v / ||v||`` over the last dimension (``(P,)`` or ``(C, P)``); 0 where
    ``||v|| = 0``: a step of length ``radius`` in v's direction (SAM's perturbation,
    Foret et al. 2021, Eq. 2)."""
    n = norm(v)
    return torch.where(n > 0, v / n.clamp(min=torch.finfo(v.dtype).tiny) * radius, torch.zeros_like(v))


def proximal(g: Tensor, y: Tensor, center: Tensor, mu: float) -> Tensor:
    """``g + mu (y - center)``: the gradient of ``f + (mu/2) ||y - center||^2`` (FedProx,
    Li et al. 2020, Eq. 2); shapes broadcast (``(P,)`` or ``(C, P)``)."""
    return g.add(y - center, alpha=mu)


def local_work(run: LocalRun, local: LocalSGD | None = None) -> Tensor | float:
    """eta_l tau(K_i): the displacement of this round's local steps along a constant unit
    direction; K_i eta_l without momentum (``local`` None or momentum 0), see
    :meth:`LocalSGD.effective_steps`. A number, or a ``(C, 1)`` tensor in y's dtype when
    vectorised."""
    k, lr = run.ctx.num_steps, run.ctx.lr
    k = k.to(run.y.dtype) if isinstance(k, Tensor) else k
    if local is not None:
        k = local.effective_steps(k)
    return k * (lr.to(run.y.dtype) if isinstance(lr, Tensor) else lr)


def per_client(run: LocalRun, x: Tensor) -> Tensor:
    """A copy of ``x`` (``(P,)``) shaped like ``run.y`` (one row per client when vectorised)."""
    return x.expand_as(run.y).clone()


def clone_state(state: State) -> State:
    """A deep copy of a named-tensor state."""
    return {k: v.clone() for k, v in state.items()}


__all__ = [
    "FedAlgorithm", "LocalSGD", "NoHparams", "check", "weighted_mean", "uniform_mean", "norm", "local_work", "per_client", "clone_state",
]
