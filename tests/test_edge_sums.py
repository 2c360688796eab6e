"""Hierarchical aggregation's rule (fedtorch.edge_sums): for every algorithm that declares
itself edge-reducible, aggregating edges' partial weighted sums equals aggregating the
clients' messages, under partial participation, unequal n_i and K_i, edges of unequal
size and both weightings; algorithms whose server rule is not a weighted mean say so."""

from __future__ import annotations

import pytest
import torch

from fedtorch.algorithms import available_algorithms, get_algorithm
from fedtorch.edge_sums import cat_rows, client_weights, edge_row, is_edge_reducible, light, valid_messages
from fedtorch.federation.planning import aggregation_weights
from fedtorch.protocol import ClientMessage, RoundContext

from drift_problems import build, info, problem
from simulate import local_training, simulate

SIZES = (6, 10, 20, 40, 14, 9, 25)  # n_i of N = 7 clients
STEPS = (1, 3, 5, 9, 2, 4, 7)  # K_i
COHORT = [0, 2, 3, 5, 6]  # M = 5 < N
EDGES = [[0, 1], [2, 3, 4]]  # positions in the cohort: edges of 2 and 3 clients
LR = 0.02
NOT_MEANS = ("fedcm", "fedexp", "fednova")  # server rules that are not weighted means of the messages


def _round(name: str, weighting: str):
    """Two rounds of partial participation (so server optimiser and control variates are not
    zero), then round 2's messages of the cohort: ``(algorithm, server, stacked messages)``."""
    clients, _, _ = problem(SIZES, STEPS)
    algorithm = build(name, info(clients, LR, weighting))
    x0 = torch.linspace(-1, 1, 4, dtype=torch.float64)
    server, states = simulate(algorithm, clients, x0, 2, LR, weighting, selected=lambda t: [1, 3, 4, 6] if t else [0, 1, 2, 5])
    broadcast = algorithm.broadcast(server)
    messages = []
    for i in COHORT:
        k = algorithm.num_local_steps(2, i, 0, clients[i].num_steps)
        state = states.get(i) or algorithm.init_client(server.x)
        ctx = RoundContext(2, i, 0, clients[i].num_samples, k, LR)
        messages.append(local_training(algorithm, ctx, broadcast, state, clients[i].grad)[0])
    return algorithm, server, ClientMessage.stack(messages)


def _flat_and_edges(name: str, weighting: str):
    algorithm, server, msgs = _round(name, weighting)
    flat = algorithm.aggregate(server, msgs, aggregation_weights(msgs.num_samples, weighting))
    rows = []
    for edge in EDGES:
        part = msgs.select(torch.tensor([i in edge for i in range(len(COHORT))]))
        rows.append(edge_row(part, client_weights(part.num_samples, weighting)))
    rows = cat_rows(rows)
    edged = algorithm.aggregate(server, rows, aggregation_weights(rows.num_samples, weighting, rows.num_clients))
    return flat, edged


def _tensors(server) -> dict[str, torch.Tensor]:
    return {"x": server.x, **{f"opt.{k}": v for k, v in server.opt.items()}, **{f"extra.{k}": v for k, v in server.extra.items()}}


def _gap(a, b) -> float:
    """Largest relative difference over every tensor of two server states."""
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    return max(float((ta[k] - tb[k]).norm() / max(float(ta[k].norm()), 1e-12)) for k in ta)


REDUCIBLE = [n for n in available_algorithms() if is_edge_reducible(get_algorithm(n))]


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
@pytest.mark.parametrize("name", REDUCIBLE)
def test_edge_partial_sums_give_the_flat_aggregate(name, weighting):
    flat, edged = _flat_and_edges(name, weighting)
    assert flat.round == edged.round
    assert _gap(flat, edged) <= 1e-12


@pytest.mark.parametrize("name", NOT_MEANS)
def test_server_rules_that_are_not_weighted_means_are_declared_non_reducible(name):
    assert not is_edge_reducible(get_algorithm(name))
    flat, edged = _flat_and_edges(name, "samples")  # what a partial sum would have done to them
    assert _gap(flat, edged) > 1e-6


def test_the_declarations():
    """The base rule is reducible, SCAFFOLD and FedDyn say so, an override says nothing and
    gets False, and an object that is not a FedAlgorithm is not assumed reducible."""
    from fedtorch.algorithms.base import FedAlgorithm

    class OwnRule(get_algorithm("fedavg")):
        def server_delta(self, server, messages, weights):
            return messages.delta.max(dim=0).values, server.extra

    assert {n for n in ("fedavg", "fedprox", "fedadam", "scaffold", "feddyn") if is_edge_reducible(get_algorithm(n))} == {
        "fedavg", "fedprox", "fedadam", "scaffold", "feddyn"}
    assert not is_edge_reducible(OwnRule) and FedAlgorithm.edge_reducible
    assert not is_edge_reducible(object())


def test_edge_row_counts_and_means():
    msgs = ClientMessage.stack([
        ClientMessage(torch.tensor([1.0, 2.0]), 10, 3, 0.5),
        ClientMessage(torch.tensor([3.0, 6.0]), 30, 7, 1.5),
    ])
    row = edge_row(msgs, client_weights(msgs.num_samples, "samples"))
    assert torch.equal(row.delta, torch.tensor([[2.5, 5.0]]))  # (10 [1, 2] + 30 [3, 6]) / 40
    assert (row.num_samples.tolist(), row.num_steps.tolist(), row.num_clients.tolist()) == ([40], [7], [2])
    assert row.loss.tolist() == [1.25]
    uniform = edge_row(msgs, client_weights(msgs.num_samples, "uniform"))
    assert torch.equal(uniform.delta, torch.tensor([[2.0, 4.0]])) and uniform.loss.tolist() == [1.0]
    with pytest.raises(ValueError, match="m positive weights"):
        edge_row(msgs, torch.zeros(2))


def test_light_messages_keep_counts_and_one_number_fields_and_validity_is_the_loops():
    from fedtorch.algorithms.deltasgd import DeltaSGDMessage

    m = DeltaSGDMessage(torch.ones(5), 4, 2, 0.3, step_size=torch.tensor([0.1]), step_size_min=torch.tensor([0.05]))
    t = light(m)
    assert t.delta is None and (t.num_samples, t.num_steps, t.loss) == (4, 2, 0.3) and torch.equal(t.step_size, m.step_size)
    bad = ClientMessage.stack([ClientMessage(torch.ones(3), 1, 1, 0.1), ClientMessage(torch.tensor([1.0, float("nan"), 0.0]), 1, 1, 0.1),
                               ClientMessage(torch.ones(3), 1, 1, float("inf"))])
    assert valid_messages(bad).tolist() == [True, False, False]
