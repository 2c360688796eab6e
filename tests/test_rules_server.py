"""Server-side rules (shared/ALGORITHMS.md): FedAvgM, FedCM, FedExP, FedGM, FedNova, q-FFL."""

import math

import pytest
import torch

from fedtorch.algorithms import LocalSGD
from fedtorch.algorithms.fedexp import extrapolation
from fedtorch.protocol import Broadcast, ClientMessage, LocalRun, RoundContext

from simulate import ToyClient, build, simulate
from toy import make, run_toy


def stacked(deltas, steps=None, samples=None):
    m = len(deltas)
    steps = steps or [1] * m
    samples = samples or [1] * m
    return ClientMessage.stack([ClientMessage(torch.tensor(d, dtype=torch.float64), n, k, 0.0) for d, n, k in zip(deltas, samples, steps)])


def test_fedavgm_is_server_momentum():
    algo = make("fedavgm")
    assert algo.server_optimizer.momentum == 0.9
    server = algo.init_server(torch.zeros(2, dtype=torch.float64))
    for d in ([1.0, 0.0], [0.0, 2.0]):
        server = algo.aggregate(server, stacked([d]), torch.ones(1, dtype=torch.float64))
    # v1 = (1, 0), x1 = (-1, 0); v2 = 0.9 v1 + (0, 2) = (0.9, 2), x2 = (-1.9, -2)
    assert server.x.tolist() == pytest.approx([-1.9, -2.0])


def test_fedcm_dbar_is_computed_by_the_server_and_broadcast():
    algo = make("fedcm", lr=0.5, alpha=0.25)
    server = algo.init_server(torch.zeros(2, dtype=torch.float64))
    assert torch.equal(algo.broadcast(server).extra["dbar"], torch.zeros(2, dtype=torch.float64))
    weights = torch.tensor([0.5, 0.5], dtype=torch.float64)
    server = algo.aggregate(server, stacked([[2.0, 0.0], [0.0, 8.0]], steps=[2, 4]), weights)
    # Dbar = 0.5 (2, 0) / (2 * 0.5) + 0.5 (0, 8) / (4 * 0.5) = (1, 2)
    assert algo.broadcast(server).extra["dbar"].tolist() == [1.0, 2.0]
    # the client direction uses exactly what it received (a sentinel here), nothing recomputed
    sentinel = torch.tensor([40.0, -4.0], dtype=torch.float64)
    run = LocalRun(RoundContext(1, 0, 0, 1, 3, 0.5), Broadcast(server.x, {"dbar": sentinel}), {}, torch.zeros(2, dtype=torch.float64))
    g = torch.tensor([4.0, 8.0], dtype=torch.float64)
    assert algo.direction(run, g).tolist() == [0.25 * 4 + 0.75 * 40, 0.25 * 8 - 0.75 * 4]


def test_fedexp_step_size_identical_and_orthogonal_updates():
    same = torch.tensor([[1.0, 2.0, 3.0]] * 4, dtype=torch.float64)
    assert extrapolation(same, eps=1e-3).item() == 1.0
    for m in (2, 4, 8):
        orthogonal = 3.0 * torch.eye(m, dtype=torch.float64)  # M orthogonal updates of norm 3
        assert extrapolation(orthogonal, eps=0.0).item() == pytest.approx(m / 2)
    algo = make("fedexp", eps=0.0)
    server = algo.aggregate(algo.init_server(torch.zeros(4, dtype=torch.float64)), stacked(torch.eye(4).tolist(), samples=[1, 2, 3, 4]),
                            torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    # uniform mean (0.25, ...) whatever the weights, extrapolated by M/2 = 2
    assert server.x.tolist() == [-0.5] * 4


def test_fedexp_evaluates_the_average_of_the_last_two_iterates():
    algo = make("fedexp", eval_average_last_two=True)
    server = algo.init_server(torch.zeros(2, dtype=torch.float64))
    server = algo.aggregate(server, stacked([[1.0, 1.0]]), torch.ones(1, dtype=torch.float64))
    assert torch.equal(algo.eval_model(server), server.x)  # after round 1: x^1 itself
    x1 = server.x
    server = algo.aggregate(server, stacked([[3.0, -1.0]]), torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(algo.eval_model(server), (x1 + server.x) / 2)
    assert torch.equal(make("fedexp").eval_model(server.replace(extra={})), server.x)


def test_fedgm_nu1_is_normalised_heavy_ball():
    algo = make("fedgm", nu=1.0, beta=0.5, server={"name": "sgd", "lr": 2.0})
    server = algo.init_server(torch.zeros(1, dtype=torch.float64))
    x, d = 0.0, 0.0
    for delta in (1.0, 3.0, -2.0):
        server = algo.aggregate(server, stacked([[delta]]), torch.ones(1, dtype=torch.float64))
        d = 0.5 * delta + 0.5 * d  # d^{t+1} = (1 - beta) Delta + beta d^t
        x -= 2.0 * d  # x^{t+1} = x^t - eta_g d^{t+1}
        assert server.x.item() == pytest.approx(x)


def test_fednova_equal_steps_equals_fedavg():
    a, _ = run_toy(make("fedavg"), local_steps=3)
    b, _ = run_toy(make("fednova"), local_steps=3)
    torch.testing.assert_close(a.x, b.x, rtol=1e-6, atol=1e-7)
    c, _ = run_toy(make("fedavg", local=LocalSGD(momentum=0.5)), local_steps=3)
    d, _ = run_toy(make("fednova", local=LocalSGD(momentum=0.5)), local_steps=3)
    torch.testing.assert_close(c.x, d.x, rtol=1e-6, atol=1e-7)


def test_fednova_fixed_point_is_the_weighted_optimum_where_fedavg_drifts():
    b = [torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)]
    clients = [ToyClient(lambda y, bi=bi: (0.5 * (y - bi).square().sum(), y - bi), 1, k) for bi, k in zip(b, (1, 10))]
    target = (b[0] + b[1]) / 2  # equal p_i
    x0 = torch.zeros(2, dtype=torch.float64)
    nova, _ = simulate(build("fednova", 2, 1e-3), clients, x0, 3000, 1e-3)
    avg, _ = simulate(build("fedavg", 2, 1e-3), clients, x0, 3000, 1e-3)
    assert (nova.x - target).norm() / target.norm() < 0.01
    pulled = (1 * b[0] + 10 * b[1]) / 11  # sum p_i K_i b_i / sum p_i K_i
    assert (avg.x - pulled).norm() / pulled.norm() < 0.01 and (avg.x - target).norm() > 0.3


@pytest.mark.parametrize("weighting", ["uniform", "samples"])
def test_qffl_q0_is_fedavg_under_either_weighting(weighting):
    a, _ = run_toy(make("fedavg"), weighting=weighting)
    b, _ = run_toy(make("qffl", q=0.0), weighting=weighting)  # q-FFL follows federation.weighting
    torch.testing.assert_close(a.x, b.x, rtol=1e-5, atol=1e-6)


def test_qffl_message_matches_the_paper_formula():
    algo = make("qffl", q=2.0)
    x = torch.zeros(2, dtype=torch.float64)
    run = LocalRun(RoundContext(0, 0, 0, 1, 1, 0.5), Broadcast(x), {}, x.clone())
    run.loss = torch.tensor(3.0)  # F_i: the first step's minibatch loss at x^t
    algo.direction(run, torch.zeros(2, dtype=torch.float64))
    run.y.copy_(torch.tensor([-1.0, -2.0]))  # Delta_i = (1, 2), L = 2, Delta' = (2, 4)
    msg, _ = algo.finish_local(run, 0.0)
    assert msg.delta.tolist() == [9 * 2.0, 9 * 4.0]  # F^q Delta'
    assert msg.h.item() == pytest.approx(2 * 3.0 * 20 + 2 * 9)  # q F^{q-1} ||Delta'||^2 + L F^q


def fairness_problem(clients=10, minority=3, n=40):
    """Linear binary tasks: 7 clients share one boundary, 3 a perpendicular one."""
    from fedtorch.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    xs, ys, parts = [], [], []
    for c in range(clients):
        angle = math.pi / 2 if c < minority else 0.0
        x = torch.randn(n, 2, generator=g)
        xs.append(x)
        ys.append((x @ torch.tensor([math.cos(angle), math.sin(angle)]) > 0).long())
        parts.append(torch.arange(c * n, (c + 1) * n))
    x, y = torch.cat(xs), torch.cat(ys)
    return TensorDataset(x, y, x, y, 2, "fair"), parts


def test_qffl_larger_q_lowers_the_spread_of_client_accuracy():
    from torch import nn

    from fedtorch.execution import SerialExecutor
    from fedtorch.federation.client_eval import summarize

    ds, parts = fairness_problem()
    ex = SerialExecutor(lambda: nn.Linear(2, 2), ds.train_x, ds.train_y, 8, nn.functional.cross_entropy)
    spread = {}
    for q in (0.0, 3.0):
        server, _ = run_toy(make("qffl", num_clients=10, q=q), ds, parts, rounds=20, batch_size=8)
        acc = torch.tensor([ex.evaluate(server.x, ds.train_x[p], ds.train_y[p])[1] for p in parts])
        spread[q] = summarize(acc, "acc")
    assert spread[3.0]["acc_std"] < 0.75 * spread[0.0]["acc_std"]
    assert spread[3.0]["acc_worst10"] > spread[0.0]["acc_worst10"]
