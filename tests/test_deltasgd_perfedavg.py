"""Delta-SGD's same-minibatch curvature estimate and step-size log, and Per-FedAvg's
meta-step counting (issue 12, items 2 and 4), under minibatch noise, unequal K_i,
unequal n_i and partial participation."""

import csv
import dataclasses
import math

import pytest
import torch
from torch import nn

from fedtorch.algorithms import LocalSGD
from fedtorch.execution import EXECUTORS
from fedtorch.experiment.recorder import Recorder
from fedtorch.federation.sync import RoundReport
from fedtorch.flat import FlatModule
from fedtorch.protocol import Broadcast, ClientResult, ClientTask, LocalRun, RoundContext

from simulate import ToyClient, simulate
from toy import make


def batched_training(algorithm, ctx: RoundContext, x: torch.Tensor, oracle, same_batch: bool = True, stop_after=None):
    """Drive one client's hooks in protocol order with a *minibatch* oracle.

    ``oracle(y, k) -> (loss, grad)`` is the loss on minibatch k. ``run.grad_at`` evaluates
    on the current step's minibatch (what every executor does); with ``same_batch=False``
    it answers with the previous minibatch instead (what comparing g_k with the stored
    g_{k-1} amounts to). ``stop_after``: end after that many steps, as early stopping
    does (``finish_local`` sees ``num_steps`` = the steps taken). Returns (message, new
    state, calls) with ``calls`` the
    ``(kind, point, batch)`` of every gradient evaluation.
    """
    run = LocalRun(ctx, Broadcast(x), {}, y=torch.empty_like(x))
    run.y.copy_(algorithm.init_local(run))
    calls = []

    def grad_at(point):
        batch = run.step if same_batch else max(run.step - 1, 0)
        calls.append(("grad_at", point.clone(), batch))
        return tuple(t.clone() for t in oracle(point, batch))

    run.grad_at = grad_at
    losses = []
    for _ in range(ctx.num_steps if stop_after is None else stop_after):
        point = algorithm.perturb(run)
        at = run.y if point is None else point
        calls.append(("step", at.clone(), run.step))
        loss, g = oracle(at, run.step)
        run.loss = loss
        algorithm.local_step(run, algorithm.direction(run, g.clone()))
        run.step += 1
        losses.append(float(loss))
    if stop_after is not None:
        run.ctx = dataclasses.replace(ctx, num_steps=run.step)
    msg, state = algorithm.finish_local(run, sum(losses) / max(len(losses), 1))
    return msg, state, calls


def noisy_isotropic_quadratic(big_l: float, dim: int = 4, noise: float = 1.0, seed: int = 0):
    """Minibatch k's loss (L/2)||y - b_k||^2 with random centres b_k (minibatch noise):
    every minibatch is L-smooth, and g_k(y) - g_k(y') = L (y - y') exactly."""
    centres = noise * torch.randn(1000, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def oracle(y, k):
        r = y - centres[k]
        return 0.5 * big_l * r @ r, big_l * r

    return oracle


def etas_of(algorithm, ctx, x, oracle, same_batch=True):
    etas = []
    step = algorithm.local_step

    def recording(run, d):
        step(run, d)
        etas.append(run.buffers["eta"].item())

    algorithm.local_step = recording
    msg, _, _ = batched_training(algorithm, ctx, x, oracle, same_batch)
    return etas, msg


# ---- Delta-SGD ------------------------------------------------------------------------
def test_deltasgd_step_size_survives_minibatch_noise_and_obeys_gamma_over_2l():
    big_l, gamma = 4.0, 2.0
    x = torch.tensor([3.0, -1.0, 2.0, 0.5], dtype=torch.float64)
    ctx = RoundContext(0, 0, 0, 100, 200, 0.0)
    oracle = noisy_isotropic_quadratic(big_l)
    etas, msg = etas_of(make("deltasgd", gamma=gamma), ctx, x, oracle)
    assert all(e <= gamma / (2 * big_l) + 1e-12 for e in etas[1:])
    assert min(etas) >= 0.2 - 1e-12  # eta_0 = 0.2 < gamma / (2L) = 0.25: it never shrinks
    theta1 = math.sqrt(1 + 0.02 * 1.0)  # growth bound with the authors' amplifier 0.02, theta_0 = 1
    assert etas[1:3] == pytest.approx([0.2 * theta1, 0.2 * theta1 * math.sqrt(1 + 0.02 * theta1)], rel=1e-12)
    assert msg.step_size_min.item() == pytest.approx(min(etas)) and msg.step_size_max.item() == pytest.approx(max(etas))
    assert msg.step_size.item() == pytest.approx(sum(etas) / len(etas))
    # The same rule fed gradients of two different minibatches (the old estimate) collapses:
    noisy, _ = etas_of(make("deltasgd", gamma=gamma), ctx, x, oracle, same_batch=False)
    assert min(noisy) < 1e-3 * min(etas)


def test_deltasgd_compares_the_two_iterates_on_the_same_minibatch():
    # Batches differ strongly: batch k's loss is (1/2) a_k ||y||^2 with a_k alternating 1 and 50.
    curv = [1.0 if k % 2 == 0 else 50.0 for k in range(10)]
    oracle = lambda y, k: (0.5 * curv[k] * y @ y, curv[k] * y)  # noqa: E731
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    algo = make("deltasgd", gamma=2.0, amplifier=1.0)
    _, _, calls = batched_training(algo, RoundContext(0, 0, 0, 10, 6, 0.0), x, oracle)
    steps = [c for c in calls if c[0] == "step"]
    extra = [c for c in calls if c[0] == "grad_at"]
    assert len(extra) == 5  # one extra gradient per step k >= 1 ...
    for (_, point, batch), (_, prev_y, _), (_, _, step_batch) in zip(extra, steps, steps[1:]):
        assert batch == step_batch  # ... on that step's minibatch ...
        assert torch.equal(point, prev_y)  # ... at the previous iterate y_{k-1}
    # hence eta_k = min(1 / a_k, sqrt(1 + theta) eta_{k-1}) exactly: the stiff batches cap it at 1/50
    etas, _ = etas_of(make("deltasgd", gamma=2.0, amplifier=1.0), RoundContext(0, 0, 0, 10, 6, 0.0), x, oracle)
    assert all(e <= 1 / 50 + 1e-15 for k, e in enumerate(etas) if k % 2 == 1)


def regression(n=120, d=5, noise=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, generator=g)) + noise * torch.randn(n, generator=g)
    return x, y


def mse(out, target, reduction="mean"):
    return nn.functional.mse_loss(out.squeeze(-1), target, reduction=reduction)


@pytest.mark.parametrize("executor", ["serial", "vectorized"])
def test_deltasgd_on_a_real_model_with_batch_two_keeps_a_useful_step_size(executor):
    x, y = regression()
    torch.manual_seed(0)
    x0 = FlatModule(nn.Linear(5, 1)).params.detach().clone()
    ex = EXECUTORS[executor](lambda: nn.Linear(5, 1), x, y, 2, mse)
    tasks = [ClientTask(RoundContext(0, c, 0, 60, k, 0.1), torch.arange(60 * c, 60 * (c + 1))) for c, k in ((0, 100), (1, 37))]
    results = ex.run(make("deltasgd"), Broadcast(x0), tasks, [{}, {}])
    for r in results:
        m = r.message
        assert 0.02 < m.step_size_min.item() <= m.step_size.item() <= m.step_size_max.item()
        assert m.loss < mse(x @ torch.zeros(5), y).item()  # it trained
    serial = EXECUTORS["serial"](lambda: nn.Linear(5, 1), x, y, 2, mse).run(make("deltasgd"), Broadcast(x0), tasks, [{}, {}])
    for a, b in zip(results, serial):  # the vectorised grad_at on (C, P) rows matches the serial one
        torch.testing.assert_close(a.message.step_size_min, b.message.step_size_min, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a.message.delta, b.message.delta, rtol=1e-3, atol=1e-5)


def test_recorder_writes_step_sizes_per_client_and_min_mean_max_per_round(tmp_path):
    from fedtorch.algorithms.deltasgd import DeltaSGDMessage

    def result(cid, lo, mean, hi):
        t = lambda v: torch.tensor([v])  # noqa: E731
        msg = DeltaSGDMessage(torch.zeros(3), 10, 5, 0.5, step_size=t(mean), step_size_min=t(lo), step_size_max=t(hi))
        return ClientResult(cid, msg, {}, 0.1)

    results = [result(0, 0.1, 0.2, 0.3), result(1, 0.05, 0.4, 0.9), result(2, 1e-9, 5.0, 50.0)]
    rec = Recorder(tmp_path)
    row = rec.record(RoundReport(1, results, torch.tensor([True, True, False]), 0.5, None, None, 1.0, 0, 0))
    assert (row["step_size_min"], row["step_size_max"]) == pytest.approx((0.05, 0.9))  # client 2 was not aggregated
    assert row["step_size_mean"] == pytest.approx(0.3)
    with open(tmp_path / "clients.csv") as f:
        clients = list(csv.DictReader(f))
    assert [float(c["step_size_min"]) for c in clients] == pytest.approx([0.1, 0.05, 1e-9])
    with open(tmp_path / "metrics.csv") as f:
        (metrics,) = list(csv.DictReader(f))
    assert float(metrics["step_size_mean"]) == pytest.approx(0.3) and float(metrics["step_size_max"]) == pytest.approx(0.9)


# ---- Per-FedAvg -------------------------------------------------------------------------
A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)


def batch_quadratic(centres):
    """Minibatch k's loss (1/2)(y - c_k)^T A (y - c_k): consecutive batches differ."""
    def oracle(y, k):
        r = y - centres[k]
        return 0.5 * r @ A @ r, A @ r
    return oracle


def meta_steps(x, centres, alpha, beta, count, last_same_batch=False, variant="fo"):
    """Hand-computed Per-FedAvg meta steps: inner on batch 2m, outer on batch 2m+1."""
    y = x.clone()
    grad = lambda y, k: A @ (y - centres[k])  # noqa: E731
    for m in range(count):
        inner, outer = 2 * m, (2 * m if last_same_batch and m == count - 1 else 2 * m + 1)
        adapted = y - alpha * grad(y, inner)
        g = grad(adapted, outer)
        y = y - beta * (g if variant == "fo" else g - alpha * A @ g)  # exact Hessian-vector product
    return y


CENTRES = torch.randn(40, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


@pytest.mark.parametrize("variant", ["fo", "hf"])
def test_perfedavg_one_local_step_is_one_meta_step(variant):
    algo = make("perfedavg", alpha=0.1, variant=variant, delta=1e-5)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loop_steps = algo.num_local_steps(0, 0, 0, 1)  # the schedule's K_i = 1
    msg, _, _ = batched_training(algo, RoundContext(0, 0, 0, 8, loop_steps, 0.05), x, batch_quadratic(CENTRES))
    want = meta_steps(x, CENTRES, 0.1, 0.05, 1, variant=variant)
    assert msg.delta.norm() > 0.01  # not the zero update of a lone inner step
    torch.testing.assert_close(x - msg.delta, want, rtol=1e-7, atol=1e-7)
    assert msg.num_steps == 1


def test_perfedavg_three_local_steps_make_exactly_three_meta_steps():
    algo = make("perfedavg", alpha=0.1)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loop_steps = algo.num_local_steps(0, 0, 0, 3)
    msg, _, calls = batched_training(algo, RoundContext(0, 0, 0, 8, loop_steps, 0.05), x, batch_quadratic(CENTRES))
    assert len({c[2] for c in calls}) == 6  # six minibatches: D, D' for each meta step
    torch.testing.assert_close(x - msg.delta, meta_steps(x, CENTRES, 0.1, 0.05, 3), rtol=1e-12, atol=1e-12)
    assert msg.num_steps == 3
    for wrong in (2, 4):  # and neither fewer nor more
        assert (meta_steps(x, CENTRES, 0.1, 0.05, wrong) - (x - msg.delta)).norm() > 1e-3


def test_perfedavg_odd_cut_completes_the_trailing_meta_step_on_its_batch():
    algo = make("perfedavg", alpha=0.1)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    msg, _, _ = batched_training(algo, RoundContext(0, 0, 0, 8, 5, 0.05), x, batch_quadratic(CENTRES))  # a straggler's cut
    torch.testing.assert_close(x - msg.delta, meta_steps(x, CENTRES, 0.1, 0.05, 3, last_same_batch=True), rtol=1e-12, atol=1e-12)
    assert msg.num_steps == 3


def test_perfedavg_rounds_with_unequal_steps_partial_participation_and_unequal_sizes():
    grads = [lambda y, c=c: (0.5 * (y - c) @ A @ (y - c), A @ (y - c)) for c in CENTRES[:3]]
    clients = [ToyClient(g, n, k) for g, n, k in zip(grads, (5, 20, 11), (1, 3, 2))]
    algo = make("perfedavg", num_clients=3, alpha=0.1, lr=0.05)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    server, _ = simulate(algo, clients, x, rounds=1, lr=0.05, selected=lambda t: [0, 2])
    ends = [meta_steps(x, CENTRES[[i] * 10], 0.1, 0.05, clients[i].num_steps) for i in (0, 2)]
    want = (5 * ends[0] + 11 * ends[1]) / 16  # sample-weighted over the two selected clients
    torch.testing.assert_close(server.x, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_perfedavg_vectorised_masked_odd_cuts_match_serial(momentum):
    x, y = regression(n=60)
    torch.manual_seed(1)
    x0 = FlatModule(nn.Linear(5, 1)).params.detach().clone()
    tasks = [ClientTask(RoundContext(0, c, 0, 20, k, 0.05), torch.arange(20 * c, 20 * (c + 1))) for c, k in ((0, 6), (1, 5), (2, 1))]
    out = {}
    for name in ("serial", "vectorized"):
        ex = EXECUTORS[name](lambda: nn.Linear(5, 1), x, y, 4, mse)
        algo = make("perfedavg", alpha=0.1, variant="hf", local=LocalSGD(momentum=momentum))
        out[name] = ex.run(algo, Broadcast(x0), tasks, [{}, {}, {}])
    for a, b in zip(out["vectorized"], out["serial"]):
        assert a.message.num_steps == b.message.num_steps
        torch.testing.assert_close(a.message.delta, b.message.delta, rtol=1e-3, atol=1e-5)
    assert [r.message.num_steps for r in out["serial"]] == [3, 3, 1]
    assert all(r.message.delta.norm() > 0 for r in out["serial"])


def test_perfedavg_early_stop_after_an_inner_step_drops_only_that_half():
    # Early stopping ends training after a step, at an epoch boundary (here 5 loop steps of
    # the planned 20); the executor then hands finish_local num_steps = 5.
    algo = make("perfedavg", alpha=0.1)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    msg, _, _ = batched_training(algo, RoundContext(0, 0, 0, 8, 20, 0.05), x, batch_quadratic(CENTRES), stop_after=5)
    torch.testing.assert_close(x - msg.delta, meta_steps(x, CENTRES, 0.1, 0.05, 2), rtol=1e-12, atol=1e-12)
    assert msg.num_steps == 2
