"""Client-optimiser rules (shared/ALGORITHMS.md): FedLESAM, FedSAM, FedNAR, Delta-SGD,
Per-FedAvg."""

import pytest
import torch
from torch import nn

from fedtorch.protocol import Broadcast, RoundContext

from simulate import local_training
from toy import make, run_toy

A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)  # f(y) = y^T A y / 2


def quadratic(y):
    return 0.5 * y @ A @ y, A @ y


def recording(grad, points):
    def oracle(y):
        points.append(y.clone())
        return grad(y)
    return oracle


def test_fedlesam_gradient_is_taken_at_the_globally_perturbed_point():
    algo = make("fedlesam", rho=0.1)
    x = torch.tensor([1.0, 1.0], dtype=torch.float64)
    x_old = torch.tensor([4.0, 5.0], dtype=torch.float64)  # x_old - x = (3, 4), norm 5
    delta = 0.1 * torch.tensor([0.6, 0.8], dtype=torch.float64)
    points = []
    msg, state = local_training(algo, RoundContext(1, 0, 0, 1, 3, 0.1), Broadcast(x), {"x_old": x_old}, recording(quadratic, points))
    y = x.clone()
    for point in points:  # each step: gradient A (y + delta) applied at y
        torch.testing.assert_close(point, y + delta, rtol=0, atol=1e-15)
        y = y - 0.1 * A @ (y + delta)
    torch.testing.assert_close(x - msg.delta, y)
    assert torch.equal(state["x_old"], x)
    first, _ = local_training(algo, RoundContext(0, 0, 0, 1, 3, 0.1), Broadcast(x), algo.init_client(x), quadratic)
    plain, _ = local_training(make("fedavg"), RoundContext(0, 0, 0, 1, 3, 0.1), Broadcast(x), {}, quadratic)
    assert torch.equal(first.delta, plain.delta)  # no perturbation at first participation


def test_fedsam_gradient_is_taken_at_the_sharpness_ascent_point():
    algo = make("fedsam", rho=0.05)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    points = []
    local_training(algo, RoundContext(0, 0, 0, 1, 1, 0.1), Broadcast(x), {}, recording(quadratic, points))
    g0 = A @ x
    torch.testing.assert_close(points[-1], x + 0.05 * g0 / g0.norm())


def test_fednar_small_threshold_makes_every_step_exactly_eta_c():
    algo = make("fednar", weight_decay=0.1, clip=1e-3, decay=0.5)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    trace = []
    points = []
    local_training(algo, RoundContext(2, 0, 0, 1, 4, 0.1), Broadcast(x), {}, recording(quadratic, points), trace)
    steps = [(b - a).norm().item() for a, b in zip(points, points[1:])]
    assert steps == pytest.approx([0.1 * 0.5**2 * 1e-3] * 3, rel=1e-9)  # eta_t C with eta_t = eta_l decay^t


def test_deltasgd_step_size_is_bounded_by_gamma_over_2l():
    big_l = 4.0
    algo = make("deltasgd", gamma=2.0, eta0=0.2, theta0=1.0, amplifier=1.0)  # the paper's growth rule
    trace = []
    x = torch.tensor([1.0, -3.0, 2.0], dtype=torch.float64)
    msg, _ = local_training(algo, RoundContext(0, 0, 0, 1, 30, 0.0), Broadcast(x), {}, lambda y: (0.5 * big_l * y @ y, big_l * y), trace)
    etas = [t["eta"].item() for t in trace]
    assert etas[0] == 0.2
    assert all(e <= 2.0 / (2 * big_l) + 1e-12 for e in etas[1:])
    assert etas[1] == pytest.approx(2.0 / (2 * big_l))  # the curvature bound is attained on a quadratic
    assert msg.step_size.item() == pytest.approx(sum(etas) / 30)
    assert (x - msg.delta).norm() < 1e-6 * x.norm()  # and it converges


def test_deltasgd_guards_zero_over_zero():
    algo = make("deltasgd")
    msg, _ = local_training(algo, RoundContext(0, 0, 0, 1, 5, 0.0), Broadcast(torch.zeros(3)), {}, lambda y: (y.sum() * 0, torch.zeros(3)))
    assert torch.isfinite(msg.step_size).all() and torch.equal(msg.delta, torch.zeros(3))


def test_perfedavg_first_order_and_hessian_free_meta_steps():
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    alpha, beta = 0.1, 0.05
    for variant in ("fo", "hf"):
        algo = make("perfedavg", alpha=alpha, variant=variant, delta=1e-4)
        msg, _ = local_training(algo, RoundContext(0, 0, 0, 1, 4, beta), Broadcast(x), {}, quadratic)
        y = x.clone()
        for _ in range(2):  # 4 loop steps = 2 meta steps
            outer = A @ (y - alpha * A @ y)  # grad f(y - alpha grad f(y))
            y = y - beta * (outer if variant == "fo" else outer - alpha * A @ outer)
        torch.testing.assert_close(x - msg.delta, y, rtol=1e-9, atol=1e-9)


def skewed_data():
    """Eight clients, each with two of four Gaussian classes (label skew)."""
    from fedtorch.data import TensorDataset

    g = torch.Generator().manual_seed(1)
    means = 2.0 * torch.randn(4, 6, generator=g)
    xs, ys, parts = [], [], []
    for c in range(8):
        y = torch.tensor([c % 4, (c + 1) % 4]).repeat(20)
        xs.append(means[y] + 1.5 * torch.randn(40, 6, generator=g))
        ys.append(y)
        parts.append(torch.arange(40 * c, 40 * (c + 1)))
    x, y = torch.cat(xs), torch.cat(ys)
    return TensorDataset(x, y, x, y, 4, "skew"), parts


def test_perfedavg_personalised_accuracy_beats_the_global_model_on_label_skew():
    from fedtorch.data import FederatedData
    from fedtorch.data.local_split import split_holdout
    from fedtorch.execution import SerialExecutor
    from fedtorch.federation.client_eval import evaluate_clients

    ds, parts = skewed_data()
    train, holdout = split_holdout(parts, 0.25, seed=0)
    algo = make("perfedavg", num_clients=8, alpha=0.3)
    server, _ = run_toy(algo, ds, train, rounds=5, batch_size=10)
    ex = SerialExecutor(lambda: nn.Linear(6, 4), ds.train_x, ds.train_y, 10, nn.functional.cross_entropy)
    out = evaluate_clients(algo, ex, FederatedData(ds, train), holdout, server, batch_size=10, seed=0)
    assert out["personal_acc_mean"] > out["client_acc_mean"] + 0.05
    assert out["personal_acc_worst10"] >= out["client_acc_worst10"]
