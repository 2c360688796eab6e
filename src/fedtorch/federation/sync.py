"""Synchronous rounds: sample clients, train them, aggregate, evaluate, report.

The loop wires an algorithm (what is computed) to an executor (where local training
runs); it knows neither one's internals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from fedtorch.data.federated import FederatedData, steps_per_round
from fedtorch.federation.client_states import ClientStateStore
from fedtorch.federation.sampling import sample_clients
from fedtorch.protocol import ClientMessage, ClientResult, ClientTask, RoundContext, ServerState


@dataclass(frozen=True, kw_only=True)
class SyncSettings:
    """Schedule of a synchronous run.

    Attributes:
        rounds: total rounds T.
        clients_per_round: M.
        batch_size: local minibatch size B (samples).
        local_epochs: E; K_i = E * ceil(n_i / B) unless ``local_steps`` is set.
        local_steps: fixed K for every client, or None.
        lr: eta_l, local learning rate.
        seed: training seed (client sampling, minibatch order).
        weighting: ``"samples"`` (p_i proportional to n_i) or ``"uniform"``.
        eval_every: evaluate the global model every this many rounds (and at the end).
    """

    rounds: int
    clients_per_round: int
    batch_size: int
    local_epochs: int = 1
    local_steps: int | None = None
    lr: float
    seed: int = 0
    weighting: str = "samples"
    eval_every: int = 1


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


def aggregation_weights(num_samples: torch.Tensor, weighting: str) -> torch.Tensor:
    """p_i over the aggregated clients: n_i / sum n_j (``"samples"``) or 1/M (``"uniform"``)."""
    n = num_samples.to(torch.float64)
    return n / n.sum() if weighting == "samples" else torch.full_like(n, 1.0 / len(n))


def run_sync(
    algorithm,
    executor,
    data: FederatedData,
    server: ServerState,
    store: ClientStateStore,
    settings: SyncSettings,
    evaluate: Callable[[torch.Tensor], tuple[float, float]] | None = None,
    on_round: Callable[[ServerState, RoundReport], None] | None = None,
) -> ServerState:
    """Run rounds ``server.round .. settings.rounds - 1`` and return the final state.

    A client whose update holds NaN/Inf is left out of aggregation (``report.valid``);
    if no client is valid the global model is kept.
    """
    s = settings
    for t in range(server.round, s.rounds):
        start = time.perf_counter()
        clients = sample_clients(s.seed, t, data.num_clients, s.clients_per_round)
        tasks = []
        for c in clients:
            n = data.num_samples(c)
            k = steps_per_round(n, s.batch_size, s.local_epochs, s.local_steps)
            tasks.append(ClientTask(RoundContext(t, c, s.seed, n, k, s.lr), data.client_indices[c]))
        states = [store.get(c, lambda: algorithm.init_client(server.x)) for c in clients]
        broadcast = algorithm.broadcast(server)
        results = executor.run(algorithm, broadcast, tasks, states)
        for r in results:
            store.put(r.client_id, r.state)
        messages = ClientMessage.stack([r.message for r in results])
        valid = torch.isfinite(messages.delta).all(dim=-1) & torch.isfinite(messages.loss.to(messages.delta.device))
        train_loss = float("nan")
        if valid.any():
            kept = messages if bool(valid.all()) else messages.select(valid)  # no (M, P) copy when all are valid
            weights = aggregation_weights(kept.num_samples, s.weighting)
            server = algorithm.aggregate(server, kept, weights)
            train_loss = float((weights * kept.loss.to(weights.device)).sum())
        else:
            server = server.replace(round=server.round + 1)
        seconds = time.perf_counter() - start
        test_loss = test_acc = None
        if evaluate is not None and ((t + 1) % s.eval_every == 0 or t + 1 == s.rounds):
            test_loss, test_acc = evaluate(server.x)
        report = RoundReport(
            round=t + 1,
            results=results,
            valid=valid,
            train_loss=train_loss,
            test_loss=test_loss,
            test_accuracy=test_acc,
            seconds=seconds,
            bytes_down=broadcast.nbytes * len(clients),
            bytes_up=sum(r.message.nbytes for r in results),
        )
        if on_round is not None:
            on_round(server, report)
    return server
