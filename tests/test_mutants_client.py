"""Exact local rules of Delta-SGD, FedNAR and FedAsync, and FedBuff's staleness scale.

Written to kill mutation-testing survivors (docs/testing.md). Each local rule is replayed
on a tiny float64 problem by a reference written from the paper's formulas (plain
Python, no fedtorch code) and compared step by step.
"""

from __future__ import annotations

import math

import pytest
import torch

from fedtorch.algorithms import LocalSGD, get_algorithm
from fedtorch.protocol import Broadcast, ClientMessage, FederationInfo, RoundContext

from simulate import local_training

F64 = torch.float64


def _build(name, local_wd=0.0, momentum=0.0, **hp):
    cls = get_algorithm(name)
    return cls(cls.Hparams(**hp), LocalSGD(momentum=momentum, weight_decay=local_wd), None, FederationInfo(3, 0.1))


def _train(algo, grad, y0, steps, round=0, lr=0.1):
    """One client's round from x^t = y0; returns (message, state)."""
    server = algo.init_server(y0)
    ctx = RoundContext(round, 0, 0, 10, steps, lr)
    return local_training(algo, ctx, algo.broadcast(server), algo.init_client(y0), grad)


# ---- Delta-SGD -------------------------------------------------------------------------

def delta_sgd_reference(grad, y, steps, gamma, eta0, theta0, amp, eps, wd):
    """Kim et al. 2024, Alg. 1, as the module docstring writes it (norms over the vector):
    eta_0 given; eta_k = min(gamma ||dy|| / (2 ||dg||), sqrt(1 + amp theta_{k-1}) eta_{k-1})
    + eps (curvature bound +inf where dg = 0; eta kept where dy = 0); theta_k =
    eta_k / eta_{k-1}; y <- y - eta_k (g + wd y). Returns (y, [eta_k])."""
    g_of = lambda point: grad(point)[1] + wd * point  # noqa: E731
    etas, theta, prev = [], theta0, None
    for k in range(steps):
        g = g_of(y)
        if k == 0:
            eta = eta0
        else:
            dy, dg = float((y - prev).norm()), float((g - g_of(prev)).norm())
            curvature = gamma * dy / (2 * dg) if dg > 0 else math.inf
            new = min(curvature, math.sqrt(1 + amp * theta) * etas[-1]) + eps
            if dy == 0:
                new = etas[-1]
            theta = new / etas[-1] if etas[-1] > 0 else theta
            eta = new
        etas.append(eta)
        prev = y.clone()
        y = y - eta * g
    return y, etas


def _quadratic(curv):
    curv = torch.tensor(curv, dtype=F64)
    return lambda y: (0.5 * (curv * y * y).sum(), curv * y)


CASES = {
    # nearly flat: the growth bound sqrt(1 + delta theta) eta is the active one every step
    "growth": (_quadratic([0.01, 0.02]), [1.0, -1.0], dict(amplifier=1.0, theta0=1.0)),
    # the authors' amplifier 0.02, theta0 0.5, eps > 0
    "growth-amplifier-eps": (_quadratic([0.01, 0.03]), [2.0, 1.0], dict(amplifier=0.02, theta0=0.5, eps=1e-3)),
    # steep with small gradients (||dg|| < 1): the curvature bound gamma / (2 L) is active
    "curvature": (_quadratic([4.0, 1.0]), [0.1, 0.05], dict(amplifier=1.0)),
    "curvature-gamma": (_quadratic([3.0, 2.0]), [0.2, -0.1], dict(amplifier=1.0, gamma=1.5, eta0=0.05)),
    # linear loss: dg = 0, so only the growth bound (eta grows every step)
    "linear": (lambda y: ((torch.tensor([1.0, -2.0], dtype=F64) * y).sum(), torch.tensor([1.0, -2.0], dtype=F64)),
               [0.0, 0.0], dict(amplifier=1.0, theta0=2.0)),
    # start at the minimiser: y never moves, eta stays eta_0
    "stationary": (_quadratic([1.0, 1.0]), [0.0, 0.0], dict(eta0=0.3)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_deltasgd_step_sizes_and_iterates_follow_algorithm_1(case, wd):
    grad, y0, hp = CASES[case]
    full = dict(gamma=2.0, eta0=0.2, theta0=1.0, amplifier=0.02, eps=0.0) | hp
    algo = _build("deltasgd", local_wd=wd, **hp)
    y0 = torch.tensor(y0, dtype=F64)
    steps = 4
    msg, _ = _train(algo, grad, y0, steps)
    y, etas = delta_sgd_reference(grad, y0, steps, full["gamma"], full["eta0"], full["theta0"], full["amplifier"],
                                  full["eps"], wd)
    torch.testing.assert_close(y0 - msg.delta, y, rtol=1e-12, atol=1e-12)
    assert msg.step_size.item() == pytest.approx(sum(etas) / steps, rel=1e-12)
    assert msg.step_size_min.item() == pytest.approx(min(etas), rel=1e-12)
    assert msg.step_size_max.item() == pytest.approx(max(etas), rel=1e-12)
    if case == "growth":  # hand numbers: eta_1 = sqrt(2) 0.2, theta_1 = sqrt(2), eta_2 = sqrt(1 + sqrt(2)) eta_1
        assert etas[1] == pytest.approx(math.sqrt(2) * 0.2, rel=1e-9)
        assert etas[2] == pytest.approx(math.sqrt(1 + math.sqrt(2)) * math.sqrt(2) * 0.2, rel=1e-9)
    if case == "curvature":  # between gamma / (2 L_max) and gamma / (2 L_min): Hessian diag(4, 1) + wd
        assert 2.0 / (2 * (4.0 + wd)) - 1e-12 <= min(etas[1:]) <= max(etas[1:]) <= 2.0 / (2 * (1.0 + wd))
    if case == "stationary":
        assert etas == [0.3] * steps


def test_deltasgd_reports_zero_step_sizes_for_a_client_with_no_step():
    algo = _build("deltasgd")
    msg, _ = _train(algo, _quadratic([1.0, 1.0]), torch.tensor([1.0, 2.0], dtype=F64), 0)
    assert msg.step_size.tolist() == [0.0] and msg.step_size_min.tolist() == [0.0] and msg.step_size_max.tolist() == [0.0]
    assert msg.delta.abs().max() == 0


# ---- FedNAR ----------------------------------------------------------------------------

@pytest.mark.parametrize("round", [0, 2])
def test_fednar_step_below_and_above_the_clip(round):
    """y <- y - eta decay^t u min(1, C / ||u||), u = g + lambda y (Li et al. 2023)."""
    lam, clip, decay, lr = 0.1, 1.0, 0.5, 0.1
    algo = _build("fednar", weight_decay=lam, clip=clip, decay=decay)
    g = torch.tensor([0.3, -0.4], dtype=F64)
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    step = lr * decay**round
    msg, _ = _train(algo, lambda y: ((g * y).sum(), g.clone()), y0, 1, round=round, lr=lr)
    u = g + lam * y0  # (0.4, -0.2): norm 0.447 < C, unclipped
    torch.testing.assert_close(msg.delta, step * u, rtol=1e-12, atol=1e-12)
    big = 10 * g  # u = (3.1, -3.8): clipped to norm C
    msg, _ = _train(algo, lambda y: ((big * y).sum(), big.clone()), y0, 1, round=round, lr=lr)
    u = big + lam * y0
    torch.testing.assert_close(msg.delta, step * clip * u / u.norm(), rtol=1e-12, atol=1e-12)
    noclip = _build("fednar", weight_decay=lam, clip=math.inf, decay=decay)
    msg, _ = _train(noclip, lambda y: ((big * y).sum(), big.clone()), y0, 1, round=round, lr=lr)
    torch.testing.assert_close(msg.delta, step * u, rtol=1e-12, atol=1e-12)


# ---- FedAsync --------------------------------------------------------------------------

def test_fedasync_local_steps_use_the_proximal_term_rho():
    """d = g + rho (y - x_tau); on f(y) = ||y - b||^2 / 2: y <- y - eta ((y - b) + rho (y - x))."""
    rho, lr, b = 0.5, 0.1, torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    algo = _build("fedasync", rho=rho)
    x = torch.tensor([0.2, 0.3, -0.1], dtype=F64)
    msg, _ = _train(algo, lambda y: (0.5 * (y - b).square().sum(), y - b), x, 3, lr=lr)
    y = x.clone()
    for _ in range(3):
        y = y - lr * ((y - b) + rho * (y - x))
    torch.testing.assert_close(msg.model, y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(msg.delta, x - y, rtol=1e-12, atol=1e-12)


def test_fedasync_synchronous_round_mixes_with_alpha():
    """x <- (1 - alpha) x + alpha sum_i p_i y_i (staleness 0, so a = alpha), unequal p_i."""
    alpha = 0.3
    for staleness in ("polynomial", "hinge", "constant"):
        algo = _build("fedasync", alpha=alpha, staleness=staleness, staleness_a=2.0, staleness_b=0.0)
        x = torch.tensor([1.0, -1.0], dtype=F64)
        models = torch.tensor([[3.0, 1.0], [0.0, 2.0]], dtype=F64)
        msgs = ClientMessage.stack([_model_message(m, x) for m in models])
        p = torch.tensor([0.25, 0.75], dtype=F64)
        server = algo.aggregate(algo.init_server(x), msgs, p)
        want = (1 - alpha) * x + alpha * (0.25 * models[0] + 0.75 * models[1])
        torch.testing.assert_close(server.x, want, rtol=1e-12, atol=1e-12)
        assert server.round == 1


def _model_message(model, x):
    from fedtorch.algorithms.fedasync import ModelMessage

    return ModelMessage(delta=x - model, num_samples=1, num_steps=1, loss=0.0, model=model.clone())


@pytest.mark.parametrize(("staleness", "a", "b", "tau", "scale"), [
    ("hinge", 10.0, 4.0, 2, 1.0),  # tau <= b: 1
    ("hinge", 10.0, 4.0, 4, 1.0),
    ("hinge", 10.0, 4.0, 6, 1 / 21),  # 1 / (a (tau - b) + 1)
    ("hinge", 0.5, 1.0, 5, 1 / 3),
    ("polynomial", 0.5, 4.0, 3, 0.5),  # (tau + 1)^-a
    ("polynomial", 2.0, 4.0, 1, 0.25),
    ("constant", 3.0, 1.0, 9, 1.0),
])
def test_fedasync_mixing_weight_and_fedbuff_scale_per_staleness(staleness, a, b, tau, scale):
    """FedAsync's a_t = alpha s(tau) (Xie et al. 2019), FedBuff's Delta_i <- s(tau) Delta_i."""
    asy = _build("fedasync", alpha=0.6, staleness=staleness, staleness_a=a, staleness_b=b)
    assert asy.mixing_weight(tau) == pytest.approx(0.6 * scale, rel=1e-12)
    x = torch.tensor([1.0, 2.0], dtype=F64)
    y = torch.tensor([3.0, -2.0], dtype=F64)
    server = asy.apply_async(asy.init_server(x), _model_message(y, x), tau)
    torch.testing.assert_close(server.x, (1 - 0.6 * scale) * x + 0.6 * scale * y, rtol=1e-12, atol=1e-12)
    assert server.round == 1
    buff = _build("fedbuff", buffer_size=3, staleness=staleness, staleness_a=a, staleness_b=b)
    assert buff.staleness_scale(tau) == pytest.approx(scale, rel=1e-12)
    assert buff.staleness_scale(0) == 1.0
    assert buff.buffer_size(7) == 3


def test_fedbuff_server_momentum_carries_across_flushes():
    """Two buffer flushes with server.optimizer=sgd, momentum 0.9, lr 0.5:
    v_1 = D_1, x_1 = x_0 - lr v_1; v_2 = 0.9 v_1 + D_2, x_2 = x_1 - lr v_2 (D: weighted mean)."""
    from fedtorch.algorithms.server_optimizers import make_server_optimizer

    cls = get_algorithm("fedbuff")
    algo = cls(cls.Hparams(buffer_size=2), LocalSGD(), make_server_optimizer("sgd", lr=0.5, momentum=0.9),
               FederationInfo(4, 0.1))
    x0 = torch.tensor([1.0, -1.0], dtype=F64)
    d1 = torch.tensor([[0.2, 0.4], [0.6, -0.2]], dtype=F64)
    d2 = torch.tensor([[-0.1, 0.3], [0.5, 0.1]], dtype=F64)
    stack = lambda d: ClientMessage.stack([ClientMessage(delta=r, num_samples=1, num_steps=1, loss=0.0) for r in d])  # noqa: E731
    p = torch.tensor([0.5, 0.5], dtype=F64)
    s1 = algo.aggregate(algo.init_server(x0), stack(d1), p)
    s2 = algo.aggregate(s1, stack(d2), p)
    v1 = d1.mean(dim=0)
    x1 = x0 - 0.5 * v1
    v2 = 0.9 * v1 + d2.mean(dim=0)
    torch.testing.assert_close(s1.x, x1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s2.x, x1 - 0.5 * v2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s2.opt["momentum"], v2, rtol=1e-12, atol=1e-12)
    assert s2.round == 2


def _vectorised(algo, grads, x, steps):
    """The clients of ``grads`` trained at once (the vectorised convention), all with K
    loop steps; returns the stacked ``(C, ...)`` message, not split."""
    from fedtorch.protocol import LocalRun

    count = len(grads)
    column = lambda v: torch.tensor([v] * count).reshape(-1, 1)  # noqa: E731
    ctx = RoundContext(0, torch.arange(count).reshape(-1, 1), 0, column(10), column(steps), 0.1)
    server = algo.init_server(x)
    run = LocalRun(ctx, algo.broadcast(server), {}, y=x.new_empty(count, x.numel()))

    def oracle(points):
        losses, gs = zip(*(grad(p) for grad, p in zip(grads, points)))
        return torch.stack(losses), torch.stack(gs)

    run.y.copy_(algo.init_local(run))
    run.grad_at = lambda points: tuple(t.clone() for t in oracle(points))
    for _ in range(steps):
        point = algo.perturb(run)
        run.loss, g = oracle(run.y if point is None else point)
        algo.local_step(run, algo.direction(run, g))
        run.step += 1
    return algo.finish_local(run, 0.0)[0]


@pytest.mark.parametrize("vectorised", [False, True])
def test_deltasgd_one_step_reports_eta0(vectorised):
    """K = 1: the round's only step size is eta_0 (mean, min and max)."""
    algo = _build("deltasgd", eta0=0.3)
    x = torch.tensor([1.0, 2.0], dtype=F64)
    if vectorised:
        msg = _vectorised(algo, [_quadratic([1.0, 2.0]), _quadratic([0.5, 0.5])], x, 1)
        assert msg.step_size.shape == (2, 1)
        assert msg.step_size.flatten().tolist() == [0.3, 0.3] and msg.step_size_max.flatten().tolist() == [0.3, 0.3]
    else:
        msg, _ = _train(algo, _quadratic([1.0, 2.0]), x, 1)
        assert msg.step_size.tolist() == [0.3] and msg.step_size_min.tolist() == [0.3]


def test_perfedavg_client_with_no_step_sends_zero_meta_steps():
    """K = 0 (no loop step): zero update and num_steps 0, serial and vectorised ((C, 1) int64)."""
    algo = get_algorithm("perfedavg")()
    x = torch.tensor([1.0, 2.0], dtype=F64)
    quad = _quadratic([1.0, 2.0])
    msg, _ = _train(algo, quad, x, 0)
    assert msg.num_steps == 0 and msg.delta.abs().max() == 0
    msg = _vectorised(algo, [quad, quad, quad], x, 0)
    assert msg.num_steps.shape == (3, 1) and msg.num_steps.dtype == torch.int64
    assert msg.num_steps.flatten().tolist() == [0, 0, 0]
    msg = _vectorised(algo, [quad, quad], x, 3)  # 3 loop steps: 2 meta steps each
    assert msg.num_steps.dtype == torch.int64 and msg.num_steps.flatten().tolist() == [2, 2]


def test_qffl_keeps_the_parameters_dtype_when_the_loss_is_float64():
    """F_i is cast to the parameters' dtype: a float64 loss does not turn the float32
    update (and then the global model) into float64."""
    algo = _build("qffl", q=1.0)
    b = torch.tensor([1.0, -1.0])
    grad = lambda y: (0.5 * (y - b).square().sum().double(), y - b)  # noqa: E731
    msg, _ = _train(algo, grad, torch.zeros(2), 2)
    assert msg.delta.dtype == torch.float32 and msg.h.dtype == torch.float32
