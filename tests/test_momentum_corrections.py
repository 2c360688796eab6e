"""Gradient corrections composed with client momentum 0.9 (issue 12, item 3; the rule is
in fedtorch.algorithms.base.LocalSGD): the correction goes into the momentum buffer and
a state estimated from the displacement divides by the momentum-effective step count
tau(K). The old composition (dividing by K) blows up; NIID-Bench's (correction after the
momentum step) stays finite but misses the optimum. Unequal n_i and K_i, float64,
deterministic full-batch gradients."""

from dataclasses import dataclass

import pytest
import torch

from fedtorch.algorithms import LocalSGD
from fedtorch.algorithms.base import FedAlgorithm, local_work
from fedtorch.algorithms.scaffold import Scaffold, ScaffoldMessage
from fedtorch.protocol import Broadcast, ClientMessage, LocalRun, RoundContext

from simulate import local_training, simulate, vectorised_training

from drift_problems import build, info, problem, rel_error

X0 = torch.zeros(4, dtype=torch.float64)
HEAVY = LocalSGD(momentum=0.9)


@dataclass(frozen=True, kw_only=True)
class CountsSteps(LocalSGD):
    """The old composition: momentum in the buffer, but displacements divided by K."""

    def effective_steps(self, k):
        return k


class NiidBenchScaffold(Scaffold):
    """NIID-Bench's train_net_scaffold: SGD(momentum) step on g, then y -= lr (c - c_i);
    option II divides by K lr."""

    def direction(self, run, g):
        return g

    def local_step(self, run, d):
        super().local_step(run, d)
        run.y.sub_(run.ctx.lr * run.buffers["correction"])

    def finish_local(self, run, loss):
        base = self.message(run, loss)
        c_new = run.state["c"] - run.broadcast.extra["c"] + base.delta / local_work(run)
        return ScaffoldMessage(**vars(base), dc=c_new - run.state["c"]), {"c": c_new}


def final_error(algorithm_or_name, rounds=400, selected=None, **hp):
    clients, optimum, smooth = problem()
    lr = 0.5 / smooth
    algo = algorithm_or_name(clients, lr) if callable(algorithm_or_name) else build(algorithm_or_name, info(clients, lr), HEAVY, **hp)
    server, _ = simulate(algo, clients, X0, rounds, lr, selected=selected)
    return rel_error(server.x, optimum("samples")) if torch.isfinite(server.x).all() else float("inf")


def rotating_cohort(t):
    return [(t + j) % 5 for j in range(3)]


def test_scaffold_with_momentum_reaches_the_optimum_under_partial_participation():
    assert final_error("scaffold", selected=rotating_cohort) < 1e-6


def test_scaffold_old_and_niid_bench_compositions_fail_with_momentum():
    old = final_error(lambda clients, lr: build("scaffold", info(clients, lr), CountsSteps(momentum=0.9)), rounds=200,
                      selected=rotating_cohort)
    assert old > 1e3  # blows up (inf or huge)
    niid = final_error(lambda clients, lr: NiidBenchScaffold(None, HEAVY, None, info(clients, lr)), selected=rotating_cohort)
    assert 0.1 < niid < 1e3  # finite, converged to a wrong point


def test_scaffnew_with_momentum_is_exact_and_the_old_prox_step_diverges():
    clients, optimum, smooth = problem(sizes=(6, 10, 20, 40), steps=(1, 3, 5, 9))
    lr = 0.5 / smooth
    for local, bound in ((HEAVY, None), (CountsSteps(momentum=0.9), 1e3)):
        server, _ = simulate(build("scaffnew", info(clients, lr), local), clients, X0, 400, lr)
        err = rel_error(server.x, optimum("samples")) if torch.isfinite(server.x).all() else float("inf")
        assert (err < 1e-6) if bound is None else (err > bound)


def test_fedcm_with_momentum_stays_stable_where_dividing_by_k_collapses():
    new = final_error("fedcm", rounds=300, alpha=0.1)
    fedavg = final_error("fedavg", rounds=300)  # no drift correction: a floor of its own
    assert new < 0.5 and new < fedavg
    old = final_error(lambda clients, lr: build("fedcm", info(clients, lr), CountsSteps(momentum=0.9), alpha=0.1), rounds=100)
    assert old > 1e3  # Dbar grows ~ (1 - alpha) / (1 - momentum) = 9x per round


def test_feddyn_and_fedprox_keep_their_terms_inside_the_buffer():
    assert final_error("feddyn", alpha=1.0, selected=rotating_cohort) < 1e-6  # FedDyn's fixed point survives momentum
    clients, _, _ = problem()
    run = LocalRun(RoundContext(0, 0, 0, 1, 2, 0.1), Broadcast(torch.zeros(2)), {}, torch.ones(2))
    algo = build("fedprox", info(clients, 0.1), HEAVY, mu=0.5)
    g = torch.tensor([1.0, 0.0])
    for _ in range(2):
        algo.local_step(run, algo.direction(run, g))
    # k=0: b = g + mu y = (1.5, 0.5), y = (0.85, 0.95); k=1: b = 0.9 b + g + mu y
    expected_b = 0.9 * torch.tensor([1.5, 0.5]) + torch.tensor([1.0, 0.0]) + 0.5 * torch.tensor([0.85, 0.95])
    torch.testing.assert_close(run.buffers["momentum"], expected_b)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_effective_steps_is_the_heavy_ball_displacement(momentum):
    local = LocalSGD(momentum=momentum)
    algo = FedAlgorithm(local=local)
    d = torch.tensor([1.0], dtype=torch.float64)
    for k in range(1, 12):
        run = LocalRun(RoundContext(0, 0, 0, 1, k, 1.0), Broadcast(torch.zeros(1, dtype=torch.float64)), {}, torch.zeros(1, dtype=torch.float64))
        for _ in range(k):
            algo.local_step(run, d)
        assert -run.y.item() == pytest.approx(local.effective_steps(k), rel=1e-12)
    ks = torch.tensor([[1.0], [4.0], [9.0]], dtype=torch.float64)  # vectorised (C, 1)
    assert local.effective_steps(ks)[:, 0].tolist() == pytest.approx([local.effective_steps(k) for k in (1, 4, 9)])


@pytest.mark.parametrize("name", ["scaffold", "scaffnew", "fedcm"])
def test_vectorised_hooks_match_serial_with_momentum(name):
    clients, _, smooth = problem(steps=(4,) * 5)
    lr = 0.5 / smooth
    algo = build(name, info(clients, lr), HEAVY)
    server = algo.init_server(X0 + 0.3)
    for t in range(2):  # a second round so the client and server states are non-zero
        b = algo.broadcast(server)
        ctxs = [RoundContext(t, i, 0, c.num_samples, c.num_steps, lr) for i, c in enumerate(clients)]
        states = [algo.init_client(server.x) for _ in clients] if t == 0 else states
        serial = [local_training(algo, ctx, b, s, c.grad) for ctx, s, c in zip(ctxs, states, clients)]
        vector_msgs, vector_states = vectorised_training(algo, ctxs, b, states, [c.grad for c in clients])
        for (msg, state), vmsg, vstate in zip(serial, vector_msgs, vector_states):
            torch.testing.assert_close(vmsg.delta, msg.delta)
            for k in state:
                torch.testing.assert_close(vstate[k], state[k])
        n = torch.tensor([c.num_samples for c in clients], dtype=torch.float64)
        server = algo.aggregate(server, ClientMessage.stack([m for m, _ in serial]), n / n.sum())
        states = [algo.after_aggregate(server, s) for _, s in serial]
