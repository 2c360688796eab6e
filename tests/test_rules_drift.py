"""Drift correction and client state (shared/ALGORITHMS.md): SCAFFOLD, Scaffnew, FedDyn
reach the exact optimum of federated least squares where FedAvg keeps a drift floor;
FedInit and DualProx reduce to FedAvg / FedProx in their degenerate settings."""

import pytest
import torch

from fedtorch.federation import ClientStateStore
from fedtorch.protocol import Broadcast, LocalRun, RoundContext

from simulate import build, least_squares, simulate
from toy import make, run_toy

K = 5  # local steps (K > 1), full participation, full-batch gradients


def relative_error(name, rounds, **hp):
    clients, x_star, smooth = least_squares()
    for c in clients:
        c.num_steps = K
    lr = 0.5 / smooth
    server, _ = simulate(build(name, len(clients), lr, **hp), clients, torch.zeros(5, dtype=torch.float64), rounds, lr)
    return ((server.x - x_star).norm() / x_star.norm()).item()


@pytest.mark.parametrize("name, hp", [("scaffold", {}), ("scaffnew", {"p": 1 / K}), ("feddyn", {"alpha": 0.1})])
def test_drift_corrected_methods_reach_the_exact_optimum(name, hp):
    assert relative_error(name, 400, **hp) < 1e-6


def test_fedavg_keeps_a_drift_floor_on_the_same_problem():
    early, late = relative_error("fedavg", 200), relative_error("fedavg", 400)
    assert late > 1e-2 and late == pytest.approx(early, rel=1e-6)  # converged, to the wrong point


def test_scaffnew_control_variates_sum_to_zero_after_every_round():
    clients, x_star, smooth = least_squares()
    for c in clients:
        c.num_steps = K
    lr = 0.5 / smooth
    sums = []

    def h_sum(t, server, states):
        h = [s["h"] for s in states.values()]
        sums.append(torch.stack(h).sum(0).norm().item() / max(x.norm().item() for x in h))

    simulate(build("scaffnew", 4, lr, p=1 / K), clients, torch.zeros(5, dtype=torch.float64), 50, lr, on_round=h_sum)
    assert len(sums) == 50 and max(sums[1:]) < 1e-12


def test_scaffnew_random_steps_are_geometric_shared_and_exact():
    algo = build("scaffnew", 4, 0.1, random_steps=True, p=0.25)
    draws = [algo.num_local_steps(t, 0, 7, default=99) for t in range(2000)]
    assert min(draws) >= 1 and sum(draws) / len(draws) == pytest.approx(4.0, rel=0.1)  # E[K] = 1/p
    assert draws == [algo.num_local_steps(t, 3, 7, default=1) for t in range(2000)]  # same K for every client
    assert draws != [algo.num_local_steps(t, 0, 8, default=99) for t in range(2000)]  # depends on the seed
    assert build("scaffnew", 4, 0.1, p=0.25).num_local_steps(0, 0, 7, default=6) == 6
    clients, x_star, smooth = least_squares()
    lr = 0.5 / smooth
    server, _ = simulate(build("scaffnew", 4, lr, random_steps=True, p=0.25), clients, torch.zeros(5, dtype=torch.float64), 400, lr)
    assert ((server.x - x_star).norm() / x_star.norm()).item() < 1e-6


def test_scaffold_server_control_variate_scales_with_participation():
    algo = make("scaffold", num_clients=8, lr=0.5)
    server = algo.init_server(torch.zeros(2, dtype=torch.float64))
    from fedtorch.algorithms.scaffold import ScaffoldMessage

    msgs = ScaffoldMessage.stack([ScaffoldMessage(torch.zeros(2, dtype=torch.float64), 1, 2, 0.0, dc=torch.tensor([d, 0.0], dtype=torch.float64))
                                  for d in (1.0, 3.0)])
    server = algo.aggregate(server, msgs, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert server.extra["c"].tolist() == [2 / 8 * 2.0, 0.0]  # c += (M/N) mean dc


def test_fedinit_first_participation_is_fedavg():
    one_round, _ = run_toy(make("fedavg"), rounds=1)
    first, store = run_toy(make("fedinit", beta=0.5), rounds=1)  # every client's first participation
    assert torch.equal(one_round.x, first.x) and len(store) == 2


def test_fedinit_relaxed_start_and_cpu_state():
    algo = make("fedinit", beta=0.5)
    x, z = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    run = LocalRun(RoundContext(1, 0, 0, 1, 1, 0.1), Broadcast(x), {"z": z}, torch.zeros(2))
    assert algo.init_local(run).tolist() == [1.5, 1.0]  # x + beta (x - z)
    _, store = run_toy(algo)
    assert all(t.device.type == "cpu" for s in store.state_dict().values() for t in s.values())
    assert store.nbytes == 2 * 18 * 4  # two clients x P = 18 floats x 4 bytes x 1 vector


def test_dualprox_without_lambda_and_with_reset_model_is_fedprox():
    fedprox = make("fedprox", mu=0.1)
    dualprox = make("dualprox", mu=0.1, lam=0.0)
    a, _ = run_toy(fedprox, rounds=1)
    b, _ = run_toy(dualprox, rounds=1)  # first participation: persistent model = x^t
    assert torch.equal(a.x, b.x)
    for _ in range(2):  # later rounds with the persistent model replaced by x^t (fresh store)
        a, _ = run_toy(fedprox, server=a, rounds=a.round + 1)
        b, _ = run_toy(dualprox, server=b, rounds=b.round + 1, store=ClientStateStore())
    assert torch.equal(a.x, b.x)
    kept, _ = run_toy(dualprox, rounds=3)
    assert not torch.equal(a.x, kept.x)  # the persistent local model matters


def test_dualprox_lambda_term_is_inactive_at_the_first_step():
    algo = make("dualprox", mu=0.5, lam=10.0)
    x = torch.zeros(2)
    run = LocalRun(RoundContext(0, 0, 0, 1, 2, 0.1), Broadcast(x), {"y": torch.tensor([1.0, -1.0])}, torch.zeros(2))
    run.y.copy_(algo.init_local(run))
    g = torch.tensor([1.0, 1.0])
    assert algo.direction(run, g).tolist() == [1.5, 0.5]  # g + mu (y - x), no lambda term
    algo.local_step(run, algo.direction(run, g))  # y_1 = (0.85, -1.05)
    run.step = 1
    expected = g + 0.5 * run.y + 10.0 * (run.y - torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(algo.direction(run, g), expected)
