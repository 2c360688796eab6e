"""A minimal federation that drives an algorithm's hooks directly, in protocol order.

For exact-property tests on toy problems (least squares, quadratics): each client is a
function ``y -> (loss, grad)`` instead of a model and data, so full-batch deterministic
gradients and float64 are easy. It calls the same hooks as
:func:`fedtorch.execution.local_training.train_client` and the sync loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fedtorch.algorithms import LocalSGD, get_algorithm
from fedtorch.algorithms.server_optimizers import make_server_optimizer
from fedtorch.protocol import ClientMessage, FederationInfo, LocalRun, RoundContext

Oracle = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ToyClient:
    """A client: ``grad(y) -> (loss, gradient)``, its n_i and default K_i."""

    grad: Oracle
    num_samples: int
    num_steps: int


def build(name: str, num_clients: int, lr: float, server: dict | None = None, momentum: float = 0.0, **hparams):
    """Algorithm ``name`` with ``hparams``, ``server`` optimiser settings and N, eta_l."""
    cls = get_algorithm(name)
    opt = make_server_optimizer(**server) if server is not None else None  # server: {"name": ..., ...}
    return cls(cls.Hparams(**hparams), LocalSGD(momentum=momentum), opt, FederationInfo(num_clients, lr))


def local_training(algorithm, ctx: RoundContext, broadcast, state, grad: Oracle, trace: list | None = None):
    """One client's round: returns (message, new state); ``trace`` collects run.buffers per step."""
    run = LocalRun(ctx, broadcast, state, y=torch.empty_like(broadcast.x))
    run.y.copy_(algorithm.init_local(run))
    run.grad_at = lambda point: tuple(t.clone() for t in grad(point))
    losses = []
    for _ in range(ctx.num_steps):
        point = algorithm.perturb(run)
        loss, g = grad(run.y if point is None else point)
        run.loss = loss
        algorithm.local_step(run, algorithm.direction(run, g.clone()))
        run.step += 1
        losses.append(float(loss))
        if trace is not None:
            trace.append({k: v.clone() for k, v in run.buffers.items()})
    return algorithm.finish_local(run, sum(losses) / max(len(losses), 1))


def simulate(algorithm, clients: list[ToyClient], x0: torch.Tensor, rounds: int, lr: float, weighting: str = "samples",
             selected: Callable[[int], list[int]] | None = None, states: dict | None = None, server=None, on_round=None):
    """Run ``rounds`` synchronous rounds; returns (server state, client states).

    ``selected(t)`` picks the clients of round t (default: all); ``on_round(t, server,
    states)`` is called after every aggregation.
    """
    server = server if server is not None else algorithm.init_server(x0)
    states = {} if states is None else states
    for t in range(server.round, rounds):
        chosen = selected(t) if selected else list(range(len(clients)))
        broadcast = algorithm.broadcast(server)
        messages = []
        for i in chosen:
            c = clients[i]
            k = algorithm.num_local_steps(t, i, 0, c.num_steps)
            state = states.get(i) or algorithm.init_client(server.x)
            msg, states[i] = local_training(algorithm, RoundContext(t, i, 0, c.num_samples, k, lr), broadcast, state, c.grad)
            messages.append(msg)
        stacked = ClientMessage.stack(messages)
        n = stacked.num_samples.to(torch.float64)
        weights = n / n.sum() if weighting == "samples" else torch.full_like(n, 1 / len(n))
        server = algorithm.aggregate(server, stacked, weights)
        for i in chosen:
            states[i] = algorithm.after_aggregate(server, states[i])
        if on_round is not None:
            on_round(t, server, states)
    return server, states


def least_squares(num_clients: int = 4, dim: int = 5, rows: int = 10, seed: int = 0):
    """Heterogeneous federated least squares in float64.

    Client i: f_i(y) = ||A_i y - b_i||^2 / (2 rows). Returns (clients, x_star, L) with
    x_star the minimiser of (1/N) sum_i f_i and L the largest client smoothness.
    """
    g = torch.Generator().manual_seed(seed)
    clients, hess, rhs, smooth = [], 0, 0, 0.0
    for i in range(num_clients):
        a = torch.randn(rows, dim, generator=g, dtype=torch.float64)
        b = torch.randn(rows, generator=g, dtype=torch.float64) + 3.0 * (i - num_clients / 2)

        def grad(y, a=a, b=b):
            r = a @ y - b
            return 0.5 * (r @ r) / rows, a.T @ r / rows

        clients.append(ToyClient(grad, rows, 1))
        hess = hess + a.T @ a / rows
        rhs = rhs + a.T @ b / rows
        smooth = max(smooth, torch.linalg.eigvalsh(a.T @ a / rows).max().item())
    return clients, torch.linalg.solve(hess, rhs), smooth


def vectorised_training(algorithm, ctxs: list[RoundContext], broadcast, states: list[dict], grads: list[Oracle]):
    """The clients of ``ctxs`` trained at once with a leading client dimension, following
    the vectorised convention of :mod:`fedtorch.protocol` (all take the same K here).

    Returns (one message per client, one new state per client), split with ``unstack``.
    """
    as_column = lambda values: torch.tensor(values).reshape(-1, 1)  # noqa: E731
    ctx = RoundContext(ctxs[0].round, as_column([c.client_id for c in ctxs]), ctxs[0].seed,
                       as_column([c.num_samples for c in ctxs]), as_column([c.num_steps for c in ctxs]), ctxs[0].lr)
    state = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    run = LocalRun(ctx, broadcast, state, y=broadcast.x.new_empty(len(ctxs), broadcast.x.numel()))

    def oracle(points):
        losses, gs = zip(*(grad(p) for grad, p in zip(grads, points)))
        return torch.stack(losses), torch.stack(gs)

    run.y.copy_(algorithm.init_local(run))
    run.grad_at = lambda points: tuple(t.clone() for t in oracle(points))
    losses = torch.zeros(len(ctxs), dtype=torch.float64)
    for _ in range(ctxs[0].num_steps):
        point = algorithm.perturb(run)
        loss, g = oracle(run.y if point is None else point)
        run.loss = loss
        algorithm.local_step(run, algorithm.direction(run, g))
        run.step += 1
        losses += loss
    message, new_state = algorithm.finish_local(run, losses / ctxs[0].num_steps)
    return message.unstack(), [{k: v[i] for k, v in new_state.items()} for i in range(len(ctxs))]
