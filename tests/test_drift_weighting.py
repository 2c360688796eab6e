"""Drift-corrected methods target the objective ``federation.weighting`` names
(issue 12, items 1 and 3): Scaffnew with one shared communication probability p keeps
sum_i p_i h_i = 0 and the exact optimum under unequal K_i; SCAFFOLD and FedDyn keep
their state average over the population weights q_i, under unequal n_i, unequal K_i and
partial participation, with deterministic full-batch gradients (float64)."""

import pytest
import torch

from simulate import simulate

from drift_problems import build, info, problem, rel_error

X0 = torch.zeros(4, dtype=torch.float64)


def scaffnew_problem():
    clients, optimum, smooth = problem(sizes=(6, 10, 20, 40), steps=(1, 3, 5, 9))
    return clients, optimum, 0.5 / smooth


def weighted_h_sum(weighting, clients, sums):
    """on_round callback: ||sum_i p_i h_i|| / max_i ||h_i|| over every client, each round."""
    n = torch.tensor([c.num_samples for c in clients], dtype=torch.float64)
    p = n / n.sum() if weighting == "samples" else torch.full_like(n, 1 / len(n))

    def record(t, server, states):
        h = torch.stack([states[i]["h"] for i in range(len(clients))])
        sums.append(float((p.unsqueeze(1) * h).sum(0).norm() / h.norm(dim=1).max()))

    return record


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
def test_scaffnew_shared_p_keeps_the_weighted_sum_zero_and_the_exact_optimum(weighting):
    clients, optimum, lr = scaffnew_problem()
    algo = build("scaffnew", info(clients, lr, weighting))
    sums = []
    server, _ = simulate(algo, clients, X0, 300, lr, weighting=weighting, on_round=weighted_h_sum(weighting, clients, sums))
    assert len(sums) == 300 and max(sums) < 1e-12
    assert rel_error(server.x, optimum(weighting)) < 1e-6
    assert algo.p == pytest.approx(1 / 4.5)  # 1 / mean K_i
    other = "uniform" if weighting == "samples" else "samples"
    assert rel_error(server.x, optimum(other)) > 0.1  # the two objectives are far apart here


def test_scaffnew_per_client_p_breaks_the_sum_and_misses_the_optimum():
    """The old rule p_i = 1/K_i (gamma/p_i = K_i gamma), rebuilt here: the same problem fails
    the invariant and the fixed point, so the test above is not vacuous."""
    from fedtorch.algorithms.base import local_work
    from fedtorch.algorithms.scaffnew import Scaffnew

    class PerClientP(Scaffnew):
        def gamma_over_p(self, run):
            return local_work(run)

    clients, optimum, lr = scaffnew_problem()
    algo = PerClientP(Scaffnew.Hparams(), federation=info(clients, lr))
    sums = []
    server, _ = simulate(algo, clients, X0, 300, lr, on_round=weighted_h_sum("samples", clients, sums))
    assert min(sums[1:]) > 1e-3
    assert rel_error(server.x, optimum("samples")) > 1e-2


def test_scaffnew_p_is_shared_explicit_or_one_over_the_mean_and_checked():
    clients, optimum, lr = scaffnew_problem()
    assert build("scaffnew", info(clients, lr), p=0.2).p == 0.2
    server, _ = simulate(build("scaffnew", info(clients, lr), p=0.15), clients, X0, 400, lr)
    assert rel_error(server.x, optimum("samples")) < 1e-6  # any shared p keeps the fixed point
    for bad in (0, 1.5, -0.1, "half"):
        with pytest.raises(ValueError, match="algorithm.p="):
            build("scaffnew", info(clients, lr), p=bad)
    for random_steps in (False, True):  # no shared p can be chosen: refused, never a per-client p_i
        with pytest.raises(ValueError, match="algorithm.p is unset"):
            build("scaffnew", info(clients, lr, mean_steps=False), random_steps=random_steps)
    random = build("scaffnew", info(clients, lr), random_steps=True)
    draws = [random.num_local_steps(t, 0, 3, default=99) for t in range(3000)]
    assert sum(draws) / len(draws) == pytest.approx(4.5, rel=0.1)  # E[K] = 1/p = mean K_i


def rotating_cohort(t):
    """3 of 5 clients per round, deterministic (partial participation, M < N)."""
    return [(t + j) % 5 for j in range(3)]


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
@pytest.mark.parametrize("name, hp", [("scaffold", {}), ("feddyn", {"alpha": 1.0})])
def test_state_average_targets_the_weighting_objective_under_partial_participation(name, hp, weighting):
    clients, optimum, smooth = problem()  # unequal n_i and K_i
    lr = 0.5 / smooth
    algo = build(name, info(clients, lr, weighting), **hp)
    server, _ = simulate(algo, clients, X0, 400, lr, weighting=weighting, selected=rotating_cohort)
    assert rel_error(server.x, optimum(weighting)) < 1e-6
    other = "uniform" if weighting == "samples" else "samples"
    assert rel_error(server.x, optimum(other)) > 0.1


def test_scaffold_population_weights_scale_the_control_variate_update():
    from fedtorch.algorithms.scaffold import ScaffoldMessage
    from fedtorch.protocol import FederationInfo

    def c_after(weighting):
        algo = build("scaffold", FederationInfo(8, 0.5, weighting, total_samples=40))
        server = algo.init_server(torch.zeros(2, dtype=torch.float64))
        msgs = ScaffoldMessage.stack([ScaffoldMessage(torch.zeros(2, dtype=torch.float64), n, 2, 0.0, dc=torch.tensor([d, 0.0], dtype=torch.float64))
                                      for n, d in ((4, 1.0), (12, 3.0))])
        return algo.aggregate(server, msgs, torch.tensor([0.25, 0.75], dtype=torch.float64)).extra["c"].tolist()

    assert c_after("samples") == pytest.approx([4 / 40 * 1.0 + 12 / 40 * 3.0, 0.0])  # sum_S (n_i / n) dc_i
    assert c_after("uniform") == pytest.approx([2 / 8 * 2.0, 0.0])  # (M / N) mean dc (the paper)
