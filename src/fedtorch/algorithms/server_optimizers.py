"""Server optimisers: one composable rule applied to the aggregate pseudo-gradient.

Every server rule of the form "x^{t+1} = x^t - step(Delta)" is a
:class:`ServerOptimizer` with ``init(x) -> state`` and
``step(x, delta, state) -> (x_new, state)``. The sign is fixed once here: ``delta``
points uphill (Delta = x^t - mean y_i), so a step *subtracts*. Any algorithm can be
combined with any server optimiser (Reddi et al., ICLR 2021, "Adaptive Federated
Optimization", Alg. 2, which FedAvg/FedAvgM/FedAdam share): an algorithm computes its
pseudo-gradient, the optimiser chosen by ``server.optimizer`` turns it into a step.

The adaptive rules are Reddi et al.'s Algorithm 2 written out as tensor arithmetic, not
``torch.optim.Adam``: the paper has no bias correction, puts tau *outside* the square
root and starts from v_{-1} = tau^2 (the paper asks for v_{-1} >= tau^2; we take the
smallest allowed value), none of which ``torch.optim`` offers. With Delta the uphill
pseudo-gradient (the paper's Delta_t is our -Delta)::

    m^{t+1} = beta1 m^t + (1 - beta1) (-Delta)
    v^{t+1} = v^t + Delta^2                                        (adagrad)
    v^{t+1} = beta2 v^t + (1 - beta2) Delta^2                      (adam)
    v^{t+1} = v^t - (1 - beta2) Delta^2 sign(v^t - Delta^2)        (yogi)
    x^{t+1} = x^t + lr m^{t+1} / (sqrt(v^{t+1}) + tau)

All tensors are ``(P,)`` flat vectors; squares, roots and signs are element-wise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from fedtorch.algorithms.hparams import check
from fedtorch.protocol import State


class ServerOptimizer(Protocol):
    """A server optimiser: pseudo-gradient in, new global model out."""

    def init(self, x: Tensor) -> State:
        """Its state for the initial model ``x`` (``(P,)``): buffers of shape ``(P,)``."""
        ...

    def step(self, x: Tensor, delta: Tensor, state: State) -> tuple[Tensor, State]:
        """``(x^{t+1}, state^{t+1})`` from x^t and the pseudo-gradient Delta (``(P,)``
        each; x^{t+1} = x^t - lr Delta for plain SGD)."""
        ...


@dataclass(frozen=True, kw_only=True)
class ServerSGD:
    """SGD on the pseudo-gradient with server learning rate and momentum.

    ``v <- momentum * v + Delta``; ``x <- x - lr * v`` (momentum 0: x - lr * Delta,
    FedAvg's server rule with eta_g = ``lr``; momentum beta: FedAvgM, Hsu et al. 2019).

    Attributes:
        lr: eta_g, server learning rate (default 1.0: plain averaging).
        momentum: beta, server momentum (default 0).

    Raises:
        ValueError: lr <= 0 or momentum outside [0, 1).
    """

    lr: float = 1.0
    momentum: float = 0.0

    def __post_init__(self):
        check(self.lr > 0, "lr", self.lr, "must be > 0", section="server")
        check(0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)", section="server")

    def init(self, x: Tensor) -> State:
        """The momentum buffer v (``(P,)`` zeros), none without momentum."""
        return {"momentum": x.new_zeros(x.shape)} if self.momentum else {}

    def step(self, x: Tensor, delta: Tensor, state: State) -> tuple[Tensor, State]:
        """v = momentum v + Delta; x^{t+1} = x^t - lr v (heavy ball; Hsu et al. 2019's
        FedAvgM), or x^t - lr Delta without momentum."""
        if self.momentum:
            v = self.momentum * state["momentum"] + delta
            return x - self.lr * v, {"momentum": v}
        return x - self.lr * delta, state


@dataclass(frozen=True, kw_only=True)
class ServerAdagrad:
    """FedAdagrad's server rule (Reddi et al. 2021, Alg. 2); see the module docstring.

    Attributes:
        lr: eta_g (the paper tunes it; default 1e-2).
        beta1: first-moment decay in [0, 1) (default 0.9).
        tau: adaptivity tau > 0 (default 1e-3).

    Raises:
        ValueError: a value outside its range.
    """

    lr: float = 1e-2
    beta1: float = 0.9
    tau: float = 1e-3

    def __post_init__(self):
        check(self.lr > 0, "lr", self.lr, "must be > 0", section="server")
        check(self.tau > 0, "tau", self.tau, "must be > 0", section="server")
        for f in dataclasses.fields(self):
            if f.name.startswith("beta"):
                v = getattr(self, f.name)
                check(0 <= v < 1, f.name, v, "must be in [0, 1)", section="server")

    def init(self, x: Tensor) -> State:
        """m^{-1} = 0 and v^{-1} = tau^2 (``(P,)`` each), as in Reddi et al. 2021, Alg. 2."""
        return {"m": x.new_zeros(x.shape), "v": torch.full_like(x, self.tau**2)}

    def second_moment(self, v: Tensor, delta_sq: Tensor) -> Tensor:
        """v^{t+1} = v^t + Delta^2."""
        return v + delta_sq

    def step(self, x: Tensor, delta: Tensor, state: State) -> tuple[Tensor, State]:
        """m = beta1 m + (1 - beta1)(-Delta); v = :meth:`second_moment`;
        x^{t+1} = x^t + lr m / (sqrt(v) + tau) (Reddi et al. 2021, Alg. 2)."""
        m = self.beta1 * state["m"] - (1 - self.beta1) * delta
        v = self.second_moment(state["v"], delta * delta)
        return x + self.lr * m / (v.sqrt() + self.tau), {"m": m, "v": v}


@dataclass(frozen=True, kw_only=True)
class ServerAdam(ServerAdagrad):
    """FedAdam's server rule: v^{t+1} = beta2 v^t + (1 - beta2) Delta^2, no bias correction.

    Attributes:
        beta2: second-moment decay in [0, 1) (default 0.99); others as :class:`ServerAdagrad`.
    """

    beta2: float = 0.99

    def second_moment(self, v: Tensor, delta_sq: Tensor) -> Tensor:
        """v^{t+1} = beta2 v^t + (1 - beta2) Delta^2."""
        return self.beta2 * v + (1 - self.beta2) * delta_sq


@dataclass(frozen=True, kw_only=True)
class ServerYogi(ServerAdam):
    """FedYogi's server rule: v^{t+1} = v^t - (1 - beta2) Delta^2 sign(v^t - Delta^2)."""

    def second_moment(self, v: Tensor, delta_sq: Tensor) -> Tensor:
        """v^{t+1} = v^t - (1 - beta2) Delta^2 sign(v^t - Delta^2)."""
        return v - (1 - self.beta2) * delta_sq * torch.sign(v - delta_sq)


SERVER_OPTIMIZERS = {"sgd": ServerSGD, "adagrad": ServerAdagrad, "adam": ServerAdam, "yogi": ServerYogi}


def server_optimizer_keys(name: str) -> list[str]:
    """The hyper-parameter names optimiser ``name`` takes, in the order lr, momentum,
    beta1, beta2, tau."""
    order = ["lr", "momentum", "beta1", "beta2", "tau"]
    return sorted((f.name for f in dataclasses.fields(SERVER_OPTIMIZERS[name])), key=order.index)


def make_server_optimizer(name: str = "sgd", **hparams) -> ServerOptimizer:
    """Build a server optimiser by name; ``hparams`` left out take the class defaults.

    Raises:
        KeyError: unknown ``name`` (message lists the known ones).
        ValueError: a hyper-parameter the optimiser does not take, or out of range.
    """
    try:
        cls = SERVER_OPTIMIZERS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown server optimizer {name!r}; known: {', '.join(sorted(SERVER_OPTIMIZERS))}") from None
    allowed = server_optimizer_keys(name.lower())
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ValueError(f"server.optimizer={name!r} does not use {', '.join('server.' + k for k in unknown)}; it takes {', '.join(allowed)}")
    return cls(**hparams)
