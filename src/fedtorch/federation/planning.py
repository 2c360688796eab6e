"""What every federation loop shares: the local-work settings, the plan of a round's (or a
dispatch wave's) client tasks, the aggregation weights, and one adapter for the algorithm's
optional hooks.

The synchronous loop (:mod:`fedtorch.federation.sync`), the asynchronous loop
(:mod:`fedtorch.federation.async_loop`) and per-client evaluation
(:mod:`fedtorch.federation.client_eval`) call the algorithm only through :class:`Hooks`, and
the loops build their tasks only with :func:`plan_tasks`, so a rule about local work (K_i,
stragglers, early stopping, lr) or about an optional hook holds in every loop at once.

Plan of one round t (sync) or wave w (async) for its selected clients, in client-id order::

    k_i   = E * ceil(n_i / B)  or  local_steps            the schedule's work
    tasks = stragglers.plan_work(tasks, t, settings)      drop / cut k_i; stamp early stopping
    K_i   = hooks.num_local_steps(t, i, seed, k_i)        loop steps (Per-FedAvg: 2 k_i)
    task  = RoundContext(t, i, seed, n_i, K_i, lr_i)      lr_i = lr_of(i, K_i) or eta_l

A straggler's cut applies to the schedule's work, before the algorithm maps it to loop
steps, so a Per-FedAvg straggler makes e_i epochs of meta steps; an algorithm whose hook
ignores ``default`` (Scaffnew with ``random_steps``: one K ~ Geometric(p) for every client)
is not cut.

Optional hooks (protocol defaults where the algorithm lacks one, :mod:`fedtorch.protocol`):
``num_local_steps`` (K_i = default), ``after_aggregate`` (state unchanged), ``eval_model``
(``server.x``), ``personalization`` (None), and for the buffered asynchronous server step
``buffer_size(default)`` (the loop's K) and ``staleness_scale(tau)`` (FedBuff's
1 / sqrt(1 + tau), Nguyen et al. 2022, Sec. 3).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from fedtorch.algorithms.staleness import polynomial
from fedtorch.data.federated import FederatedData, steps_per_round
from fedtorch.federation.stragglers import check_stragglers, plan_work
from fedtorch.protocol import ClientTask, RoundContext, ServerState

WEIGHTINGS = ("samples", "uniform")


@dataclass(frozen=True, kw_only=True)
class LocalWork:
    """The local-work settings every loop shares (base of ``SyncSettings`` and ``AsyncSettings``).

    Attributes:
        batch_size: local minibatch size B (samples).
        local_epochs: E; K_i = E * ceil(n_i / B) unless ``local_steps`` is set.
        local_steps: fixed K for every client, or None.
        lr: eta_l, the local learning rate.
        seed: training seed (client sampling, minibatch order, stragglers, delays).
        weighting: ``"samples"`` (p_i proportional to n_i) or ``"uniform"`` (1/M).
        straggler_fraction, straggler_policy: share of each round's (wave's) clients doing
            partial work, and ``"drop"`` or ``"keep"`` (:mod:`fedtorch.federation.stragglers`).
        early_stopping: local early-stopping patience in epochs (0: off).

    Raises:
        ValueError: a weighting other than samples/uniform, or a bad straggler fraction or
            policy (:func:`~fedtorch.federation.stragglers.check_stragglers`).
    """

    batch_size: int
    local_epochs: int = 1
    local_steps: int | None = None
    lr: float
    seed: int = 0
    weighting: str = "samples"
    straggler_fraction: float = 0.0
    straggler_policy: str = "drop"
    early_stopping: int = 0

    def __post_init__(self):
        check_weighting(self.weighting)
        check_stragglers(self.straggler_fraction, self.straggler_policy)


def check_weighting(weighting: str) -> None:
    """The one rule for ``federation.weighting``.

    Raises:
        ValueError: ``weighting`` is not one of :data:`WEIGHTINGS`.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"federation.weighting: unknown value {weighting!r}; allowed: {', '.join(WEIGHTINGS)}")


def aggregation_weights(num_samples: torch.Tensor, weighting: str, num_clients: torch.Tensor | int = 1) -> torch.Tensor:
    """p_i over the aggregated rows: n_i / sum n_j (``"samples"``) or c_i / sum c_j
    (``"uniform"``; c_i = ``num_clients``, 1 for a client, so 1/M).

    Args:
        num_samples: ``(M,)`` n_i of the aggregated clients (or edge rows).
        weighting: ``"samples"`` or ``"uniform"``.
        num_clients: ``(M,)`` or a number, the clients each row combines (an edge's
            partial sum, :mod:`fedtorch.edge_sums`).

    Returns:
        ``(M,)`` float64 weights summing to 1.
    """
    n = num_samples.to(torch.float64)
    if weighting == "samples":
        return n / n.sum()
    c = torch.as_tensor(num_clients).to(n).expand_as(n)
    return c / c.sum()


def plan_tasks(hooks: "Hooks", data: FederatedData, round: int, clients: list[int], work: LocalWork,
               lr_of: Callable[[int, int], float] | None = None) -> list[ClientTask]:
    """The tasks of one round (sync) or dispatch wave (async): see the module docstring.

    Args:
        hooks: the algorithm's :class:`Hooks` (``num_local_steps``).
        data: the federated data (n_i, client indices).
        round: t, the round or wave index (it seeds minibatches, K_i draws and stragglers).
        clients: the selected client ids, sorted.
        work: the :class:`LocalWork` settings.
        lr_of: ``(client_id, K_i) -> lr`` (the async loop's delay-aware rate); None: ``work.lr``.

    Returns:
        One task per client that trains (``drop`` leaves stragglers out), in ``clients`` order.
    """
    tasks = []
    for c in clients:
        n = data.num_samples(c)
        k = steps_per_round(n, work.batch_size, work.local_epochs, work.local_steps)
        tasks.append(ClientTask(RoundContext(round, c, work.seed, n, k, work.lr), data.client_indices[c]))
    tasks = plan_work(tasks, round, work)  # the schedule's work, stragglers' cuts included
    planned = []
    for t in tasks:  # the algorithm turns the work into loop steps (Per-FedAvg: 2 per meta step)
        ctx = t.ctx
        k = hooks.num_local_steps(round, ctx.client_id, work.seed, ctx.num_steps)
        lr = work.lr if lr_of is None else lr_of(ctx.client_id, k)
        planned.append(ClientTask(dataclasses.replace(ctx, num_steps=k, lr=lr), t.indices))
    return planned


class HookError(TypeError):
    """An algorithm lacks a hook the loop needs, or has one the loop cannot honour."""


class Hooks:
    """The one adapter between a loop and an algorithm's optional hooks.

    Each attribute is the algorithm's hook, or the protocol's default where the algorithm
    (any object, not necessarily a ``FedAlgorithm``) lacks it:

    * ``num_local_steps(round, client_id, seed, default) -> int``: ``default``;
    * ``after_aggregate(server, state) -> state``: ``state``;
    * ``eval_model(server) -> (P,)``: ``server.x``;
    * ``personalization() -> Personalization | None``: None;
    * ``buffer_size(default) -> int``: ``default`` (buffered asynchronous step, K);
    * ``staleness_scale(staleness) -> float``: 1 / sqrt(1 + staleness) (FedBuff's s).

    Args:
        algorithm: the run's algorithm.
        loop: ``"sync"``, ``"async"`` or ``"client_eval"``: checks the hooks that loop needs.

    Raises:
        HookError: a needed hook is missing (sync: ``aggregate``; async: ``apply_async`` or
            ``aggregate``; every training loop: ``init_client``, ``broadcast``).
    """

    def __init__(self, algorithm, loop: str = "sync"):
        self.algorithm = algorithm
        self.name = getattr(algorithm, "name", type(algorithm).__name__)
        needed = {"sync": [("aggregate",)], "async": [("apply_async", "aggregate")], "client_eval": []}[loop]
        if loop != "client_eval":
            needed += [("init_client",), ("broadcast",)]
        for options in needed:
            if not any(callable(getattr(algorithm, h, None)) for h in options):
                raise HookError(f"algorithm {self.name!r} cannot run in the {loop} loop: it has no "
                                f"{' or '.join(options)} hook (see fedtorch.protocol.Algorithm)")
        self.per_arrival = callable(getattr(algorithm, "apply_async", None))
        self.own_buffer = callable(getattr(algorithm, "buffer_size", None))
        self.num_local_steps = _hook(algorithm, "num_local_steps", _default_steps)
        self.after_aggregate = _hook(algorithm, "after_aggregate", _unchanged_state)
        self.eval_model = _hook(algorithm, "eval_model", _global_model)
        self.personalization = _hook(algorithm, "personalization", _no_personalization)
        self.buffer_size = _hook(algorithm, "buffer_size", _default_buffer)
        self.staleness_scale = _hook(algorithm, "staleness_scale", fedbuff_staleness)


def fedbuff_staleness(staleness: int) -> float:
    """s(tau) = 1 / sqrt(1 + tau) (Nguyen et al. 2022, FedBuff, Sec. 3); exactly 1.0 at tau = 0."""
    return polynomial(staleness, 0.5)


def _hook(algorithm, name: str, default):
    hook = getattr(algorithm, name, None)
    return hook if callable(hook) else default


def _default_steps(round: int, client_id: int, seed: int, default: int) -> int:
    return default


def _unchanged_state(server: ServerState, state):
    return state


def _global_model(server: ServerState) -> torch.Tensor:
    return server.x


def _no_personalization():
    return None


def _default_buffer(default: int) -> int:
    return default
