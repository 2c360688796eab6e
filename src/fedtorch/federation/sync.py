"""Synchronous rounds: sample clients, train them, aggregate, evaluate, report.

The loop wires an algorithm (what is computed) to an executor (where local training
runs); it knows neither one's internals. Each round's tasks come from
:func:`fedtorch.federation.planning.plan_tasks` and the optional hooks from
:class:`fedtorch.federation.planning.Hooks`, as in the asynchronous loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from fedtorch.data.federated import FederatedData
from fedtorch.edge_sums import client_weights, finite_rows, is_edge_reducible, upload_bytes, valid_messages
from fedtorch.federation.byzantine import Attack, RobustAggregation
from fedtorch.federation.client_states import ClientStateStore
from fedtorch.federation.local_privacy import LocalPrivacy
from fedtorch.federation.model_buffers import ModelBuffers
from fedtorch.federation.private_aggregation import PrivateAggregation
from fedtorch.federation.planning import Hooks, LocalWork, aggregation_weights, plan_tasks
from fedtorch.federation.sampling import sample_clients
from fedtorch.federation.secure_sum import SecureSum
from fedtorch.federation.uplink import Uplink, split_state
from fedtorch.protocol import ClientMessage, ClientResult, ServerState

__all__ = ["SyncSettings", "RoundReport", "run_sync", "aggregation_weights", "finite_rows"]


@dataclass(frozen=True, kw_only=True)
class SyncSettings(LocalWork):
    """Schedule of a synchronous run: the shared :class:`~fedtorch.federation.planning.LocalWork`
    (batch size, K_i schedule, lr, seed, weighting, stragglers, early stopping) plus

    Attributes:
        rounds: total rounds T.
        clients_per_round: M.
        eval_every: evaluate the global model every this many rounds (and at the end).
        client_eval_every: per-client evaluation every this many rounds (and at the
            end); 0 turns it off.
        buffers: the rule for the model's buffers (BatchNorm statistics; averaged, or
            per client with ``model.local_buffers``, :mod:`fedtorch.federation.model_buffers`).
        uplink: the compression of client updates (:mod:`fedtorch.federation.uplink`).
        sampler: ``(seed, round, N, M) -> sorted client ids`` of a round: M uniformly
            without replacement (:func:`~fedtorch.federation.sampling.sample_clients`), or
            Poisson sampling (:class:`~fedtorch.federation.private_aggregation.PoissonSampling`,
            which may give an empty round).
        attack, robust: simulated malicious clients and the server's robust rule
            (:mod:`fedtorch.federation.byzantine`).
        privacy: DP-FedAvg (:mod:`fedtorch.federation.private_aggregation`).
        local_privacy: the accounting of local DP-SGD, which the executor's gradient source
            runs (:mod:`fedtorch.federation.local_privacy`).
        secure: secure aggregation (:mod:`fedtorch.federation.secure_sum`).
    """

    rounds: int
    clients_per_round: int
    eval_every: int = 1
    client_eval_every: int = 0
    buffers: ModelBuffers = ModelBuffers()
    uplink: Uplink = Uplink()
    sampler: Callable[[int, int, int, int], list[int]] = sample_clients
    attack: Attack = Attack()
    robust: RobustAggregation = RobustAggregation()
    privacy: PrivateAggregation = PrivateAggregation()
    local_privacy: LocalPrivacy = LocalPrivacy()
    secure: SecureSum = SecureSum()

    def per_client_transforms(self) -> list[str]:
        """The configured transforms that need every client's own update (so an edge must
        forward the messages, not sum them: :mod:`fedtorch.edge_sums`)."""
        return [name for name, on in (
            ("uplink compression", self.uplink.compressor is not None), ("attack simulation", self.attack.attack is not None),
            ("robust aggregation", self.robust.aggregator is not None), ("DP-FedAvg", self.privacy.mechanism is not None),
            ("secure aggregation", self.secure.enabled)) if on]


@dataclass
class RoundReport:
    """What happened in one round (given to the ``on_round`` callback).

    Attributes:
        round: rounds completed so far (1-based index of this round).
        results: per-client results, in client-id order.
        valid: ``(M,)`` bool, which clients were aggregated (finite update).
        train_loss: weighted mean local training loss of the valid clients (nan if none).
        test_loss, test_accuracy: evaluation of the new global model, or None.
        seconds: wall seconds of training + aggregation (evaluation excluded).
        bytes_down, bytes_up: bytes sent to / received from clients.
        client_eval: per-client evaluation summary (mean, std, worst-10 %, best-10 %
            accuracy, see :mod:`fedtorch.federation.client_eval`), or None.
        server_metrics: numbers of the server's transforms this round (DP-FedAvg:
            ``epsilon`` so far, ``clip_norm``; local DP-SGD: ``local_epsilon``,
            ``local_epsilon_mean``), or None.
    """

    round: int
    results: list[ClientResult]
    valid: torch.Tensor
    train_loss: float
    test_loss: float | None
    test_accuracy: float | None
    seconds: float
    bytes_down: int
    bytes_up: int
    client_eval: dict | None = None
    server_metrics: dict | None = None


def run_sync(
    algorithm,
    executor,
    data: FederatedData,
    server: ServerState,
    store: ClientStateStore,
    settings: SyncSettings,
    evaluate: Callable[[torch.Tensor, torch.Tensor | None], tuple[float, float]] | None = None,
    on_round: Callable[[ServerState, RoundReport], None] | None = None,
    evaluate_clients: Callable[[ServerState], dict] | None = None,
) -> ServerState:
    """Run rounds ``server.round .. settings.rounds - 1`` and return the final state.

    A client whose update holds NaN/Inf is left out of aggregation (``report.valid``) and
    its new persistent state is dropped; if no client is valid the global model is kept.
    The states of the others are stored after aggregation, through the algorithm's
    ``after_aggregate``. ``evaluate`` gets the algorithm's ``eval_model`` and the server's
    buffers (None for a model without); ``evaluate_clients`` (every ``client_eval_every``
    rounds) the state. The model's buffers follow ``settings.buffers``.
    """
    s = settings
    hooks = Hooks(algorithm, "sync")
    edge_sums = (bool(getattr(executor, "edges", None)) and is_edge_reducible(algorithm) and not s.per_client_transforms()
                 and server.buffers is None)  # else the edges forward every message
    for t in range(server.round, s.rounds):
        start = time.perf_counter()
        tasks = plan_tasks(hooks, data, t, s.sampler(s.seed, t, data.num_clients, s.clients_per_round), s)
        clients = [task.ctx.client_id for task in tasks]
        broadcast = s.buffers.broadcast(algorithm.broadcast(server), server)
        if edge_sums:  # the edges' partial sums: rows of valid clients only
            results, messages, own, valid, up, edge_metrics = _train_edges(algorithm, executor, store, server, s, tasks, broadcast)
        else:
            results, messages, own = _train(algorithm, executor, store, server, s, t, tasks, broadcast)
            valid, edge_metrics = valid_messages(messages), {}
            up = [upload_bytes(r) for r in results]
        server, local_dp = s.local_privacy.account(server, tasks)
        ok = valid.tolist()
        kept_results = [r for r, good in zip(results, ok) if good]  # a rejected (non-finite) update
        own = [o for o, good in zip(own, ok) if good]  # leaves the client's state as it was
        train_loss, server_metrics = float("nan"), {}
        if valid.any() or s.privacy.mechanism is not None:  # DP releases its noise even without a client
            kept = messages if edge_sums or bool(valid.all()) else messages.select(valid)  # no (M, P) copy when all are valid
            server, train_loss, own, server_metrics = _aggregate(algorithm, server, s, t, kept, kept_results, own, up, ok)
        else:
            server = server.replace(round=server.round + 1)
        store.put_many([r.client_id for r in kept_results],
                       [{**hooks.after_aggregate(server, r.state), **s.buffers.state(o, r)} for r, o in zip(kept_results, own)])
        seconds = time.perf_counter() - start
        test_loss = test_acc = None
        if evaluate is not None and ((t + 1) % s.eval_every == 0 or t + 1 == s.rounds):
            test_loss, test_acc = evaluate(hooks.eval_model(server), server.buffers)
        client_eval = None
        if evaluate_clients is not None and s.client_eval_every and ((t + 1) % s.client_eval_every == 0 or t + 1 == s.rounds):
            client_eval = evaluate_clients(server)
        report = RoundReport(
            round=t + 1,
            results=results,
            valid=valid,
            train_loss=train_loss,
            test_loss=test_loss,
            test_accuracy=test_acc,
            seconds=seconds,
            bytes_down=broadcast.nbytes * len(clients),
            bytes_up=sum(up),
            client_eval=client_eval,
            server_metrics={**server_metrics, **local_dp, **edge_metrics} or None,
        )
        if on_round is not None:
            on_round(server, report)
        # the round's (M, P) messages and states go before the next round reads and trains
        report = results = messages = kept_results = None
    return server


def _train(algorithm, executor, store: ClientStateStore, server: ServerState, s: SyncSettings, t: int, tasks,
           broadcast) -> tuple[list[ClientResult], ClientMessage, list]:
    """Local training of round ``t``'s ``tasks``: ``(results, the stacked messages as they
    arrive at the server (the attackers' replaced), each client's loop-owned state)``. An
    empty cohort (Poisson sampling) gives no results and a message of zero rows."""
    if not tasks:
        return [], ClientMessage.empty(server.x.numel(), server.x.device), []
    states, own = _states(algorithm, store, server, tasks)
    results = executor.run(algorithm, broadcast, s.buffers.tasks(tasks, own), list(states))
    states = None  # read states (a spilled store's buffer) freed before the new ones are stored
    return results, s.attack.poison(t, [task.ctx.client_id for task in tasks], ClientMessage.stack([r.message for r in results])), list(own)


def _states(algorithm, store: ClientStateStore, server: ServerState, tasks) -> tuple[tuple, tuple]:
    """The tasks' persistent states from the store, split into ``(the algorithm's, the loop's own)``."""
    clients = [task.ctx.client_id for task in tasks]
    return zip(*(split_state(st) for st in store.get_many(clients, lambda: algorithm.init_client(server.x))))


def _train_edges(algorithm, executor, store: ClientStateStore, server: ServerState, s: SyncSettings, tasks, broadcast):
    """:func:`_train` through the executor's edges, which send partial weighted sums
    (:mod:`fedtorch.edge_sums`): ``(results with light messages, the edge rows, own states,
    (M,) valid, each client's upload bytes, {"bytes_up_edges": bytes of the rows})``."""
    states, own = _states(algorithm, store, server, tasks)
    weights = client_weights(torch.tensor([task.ctx.num_samples for task in tasks]), s.weighting)
    edge = executor.run_edges(algorithm, broadcast, list(tasks), list(states), weights)
    rows_bytes = 0 if edge.rows is None else edge.rows.nbytes
    return edge.results, edge.rows, list(own), edge.valid, edge.upload_bytes, {"bytes_up_edges": rows_bytes}


def _aggregate(algorithm, server: ServerState, s: SyncSettings, t: int, kept: ClientMessage, kept_results: list,
               own: list, up: list[int], ok: list[bool]) -> tuple[ServerState, float, list, dict]:
    """The server's step of round ``t`` over the valid messages ``kept``: uplink decoding
    (``up``, the bytes per result, is corrected in place), the aggregation weights, the
    model's buffers, then the robust rule, DP and secure aggregation, and the algorithm's
    ``aggregate``. Returns ``(server, train loss, the clients' new loop-owned states,
    the server transforms' metrics)``."""
    if s.uplink.compressor is not None and kept_results:  # what the server receives: the decoded updates
        kept, own, sent = s.uplink.apply(t, [r.client_id for r in kept_results], kept, own)
        dense = kept.delta[0].numel() * kept.delta.element_size()
        for i, b in zip([i for i, good in enumerate(ok) if good], sent):
            up[i] += b - dense
    if kept_results:
        weights = aggregation_weights(kept.num_samples, s.weighting, kept.num_clients)
    else:  # no client (DP's empty Poisson round): no weights
        weights = torch.zeros(0, dtype=torch.float64, device=kept.loss.device)
    buffers = s.buffers.aggregate(server, kept_results, weights).buffers
    train_loss = float((weights * kept.loss.to(weights.device)).sum()) if kept_results else float("nan")
    server, kept, weights = s.robust.apply(server, kept, weights)
    server, kept, weights, metrics = s.privacy.apply(server, t, kept, weights)
    server, kept, weights, cost = s.secure.apply(server, t, [r.client_id for r in kept_results], kept, weights)
    server = algorithm.aggregate(server, kept, weights).replace(buffers=buffers)
    return server, train_loss, own, {**metrics, **cost}

