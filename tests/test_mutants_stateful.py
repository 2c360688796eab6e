"""Exact two-round replays of FedCM, FedGM, FedInit, FedLESAM, DualProx, q-FFL and Per-FedAvg.

Written to kill mutation-testing survivors (docs/testing.md). Same setting as
tests/test_mutants_drift.py: quadratics f_i(y) = ||y - b_i||^2 / 2 in float64, unequal
n_i and K_i, partial participation with a client taking part twice, and a reference
written from each paper's update rule (plain loops, no fedtorch code).
"""

from __future__ import annotations

import pytest
import torch

from fedtorch.algorithms import LocalSGD, get_algorithm
from fedtorch.protocol import FederationInfo, RoundContext

from simulate import local_training, simulate
from test_mutants_drift import COHORTS, LR, SIZES, STEPS, _clients, _targets, _weights, heavy_ball, tau


def _run(name, weighting="samples", momentum=0.0, **hp):
    cls = get_algorithm(name)
    fed = FederationInfo(len(SIZES), LR, weighting, sum(SIZES), sum(STEPS) / len(STEPS))
    algo = cls(cls.Hparams(**hp), LocalSGD(momentum=momentum), None, fed)
    b = _targets(seed=1)
    x0 = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
    server, states = simulate(algo, _clients(b), x0, 2, LR, weighting, selected=lambda t: COHORTS[t])
    return b, x0, server, states


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _mean(w, vs):
    return sum(wi * v for wi, v in zip(w, vs))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fedcm_client_direction_and_dbar(momentum):
    """d = alpha g + (1 - alpha) Dbar; Dbar <- sum p_i Delta_i / (tau_i eta_l) (Xu et al. 2021)."""
    alpha = 0.3
    b, x, server, _ = _run("fedcm", momentum=momentum, alpha=alpha)
    dbar = torch.zeros(3, dtype=torch.float64)
    for cohort in COHORTS:
        p, _ = _weights(cohort, "samples")
        deltas = [x - heavy_ball(x, lambda y, i=i, db=dbar: alpha * (y - b[i]) + (1 - alpha) * db, STEPS[i], LR, momentum)
                  for i in cohort]
        dbar = _mean(p, [d / (LR * tau(STEPS[i], momentum)) for d, i in zip(deltas, cohort)])
        x = x - _mean(p, deltas)
    _close(server.extra["dbar"], dbar)
    _close(server.x, x)


def test_fedgm_server_momentum_and_nu():
    """d <- (1 - beta) Delta + beta d; x <- x - ((1 - nu) Delta + nu d) (Sun et al. 2024)."""
    beta, nu = 0.6, 0.7
    b, x, server, _ = _run("fedgm", beta=beta, nu=nu)
    d = torch.zeros(3, dtype=torch.float64)
    for cohort in COHORTS:
        p, _ = _weights(cohort, "samples")
        delta = _mean(p, [x - heavy_ball(x, lambda y, i=i: y - b[i], STEPS[i], LR, 0.0) for i in cohort])
        d = (1 - beta) * delta + beta * d
        x = x - ((1 - nu) * delta + nu * d)
    _close(server.extra["d"], d)
    _close(server.x, x)


@pytest.mark.parametrize("delta_from", ["start", "global"])
def test_fedinit_relaxed_start_and_update(delta_from):
    """y_0 = x + beta (x - z_i), z_i = the client's last local model (x^t at first
    participation); Delta_i = y_0 - y_K (start) or x - y_K (global); z_i <- y_K."""
    beta = 0.4
    b, x, server, states = _run("fedinit", beta=beta, delta_from=delta_from)
    z = {}
    for cohort in COHORTS:
        p, _ = _weights(cohort, "samples")
        deltas = []
        for i in cohort:
            y0 = x + beta * (x - z.get(i, x))
            y = heavy_ball(y0, lambda y, i=i: y - b[i], STEPS[i], LR, 0.0)
            deltas.append((y0 if delta_from == "start" else x) - y)
            z[i] = y
        x = x - _mean(p, deltas)
    _close(server.x, x)
    for i in (0, 1, 3):
        _close(states[i]["z"], z[i])


def test_fedlesam_perturbs_along_the_last_global_step():
    """delta_i = rho (x_old - x) / ||x_old - x|| (0 at first participation), gradient at
    y + delta_i; x_old <- x^t (Fan et al. 2024)."""
    rho = 0.2
    b, x, server, states = _run("fedlesam", rho=rho)
    old = {}
    for cohort in COHORTS:
        p, _ = _weights(cohort, "samples")
        deltas = []
        for i in cohort:
            v = old.get(i, x) - x
            pert = rho * v / v.norm() if v.norm() > 0 else torch.zeros_like(v)
            deltas.append(x - heavy_ball(x, lambda y, i=i, e=pert: y + e - b[i], STEPS[i], LR, 0.0))
            old[i] = x
        x = x - _mean(p, deltas)
    _close(server.x, x)
    for i in (0, 1, 3):
        _close(states[i]["x_old"], old[i])
    assert (states[1]["x_old"] - states[3]["x_old"]).abs().max() > 0  # client 1 saw x^1, client 3 x^0


def test_dualprox_persistent_model_and_both_proximal_terms():
    """y_0 = y_i (the client's last local model); d = g + mu (y - x) + lam (y_k - y_{k-1})
    from k = 1 on; the client keeps y_K."""
    mu, lam = 0.3, 0.5
    b, x, server, states = _run("dualprox", mu=mu, lam=lam)
    keep = {}
    for cohort in COHORTS:
        p, _ = _weights(cohort, "samples")
        deltas = []
        for i in cohort:
            y, prev = keep.get(i, x).clone(), None
            for _ in range(STEPS[i]):
                d = (y - b[i]) + mu * (y - x) + (lam * (y - prev) if prev is not None else 0)
                prev, y = y, y - LR * d
            deltas.append(x - y)
            keep[i] = y
        x = x - _mean(p, deltas)
    _close(server.x, x)
    for i in (0, 1, 3):
        _close(states[i]["y"], keep[i])


@pytest.mark.parametrize("q", [0.0, 2.0])
def test_qffl_weights_updates_by_loss_to_the_q(q):
    """Delta_i' = F_i^q L Delta_i, h_i = q F_i^{q-1} ||L Delta_i||^2 + L F_i^q (L = 1/eta_l,
    F_i the loss at x^t); x <- x - sum p_i Delta_i' / sum p_i h_i (Li et al. 2020, Alg. 2)."""
    b, x, server, _ = _run("qffl", q=q)
    for cohort in COHORTS:
        p, _ = _weights(cohort, "samples")
        num, den = 0, 0
        for pi, i in zip(p, cohort):
            f = 0.5 * float((x - b[i]).square().sum())
            delta = x - heavy_ball(x, lambda y, i=i: y - b[i], STEPS[i], LR, 0.0)
            scaled = delta / LR
            num = num + pi * f**q * scaled
            den = den + pi * (q * f ** (q - 1) * float(scaled.square().sum()) + f**q / LR)
        x = x - num / den
    _close(server.x, x)


def _perfedavg_reference(y, b, meta, alpha, lr, hf, dlt=1e-3):
    """Per-FedAvg on f(y) = ||y - b||^2 / 2 (H = I): y~ = y - alpha g(y);
    FO y <- y - lr g(y~); HF y <- y - lr (g(y~) - alpha H g(y~))."""
    for _ in range(meta):
        adapted = y - alpha * (y - b)
        g = adapted - b
        y = y - lr * (g - alpha * g if hf else g)
    return y


@pytest.mark.parametrize("variant", ["fo", "hf"])
@pytest.mark.parametrize("loop_steps", [1, 2, 3, 6])
def test_perfedavg_meta_steps_and_count(variant, loop_steps):
    """2 loop steps per meta step; a planned last inner step completes its meta step:
    loop steps 1, 2, 3, 6 give 1, 1, 2, 3 meta steps; the message counts them."""
    alpha = 0.3
    algo = get_algorithm("perfedavg")(get_algorithm("perfedavg").Hparams(alpha=alpha, variant=variant), LocalSGD())
    assert algo.num_local_steps(0, 0, 0, 4) == 8
    b = torch.tensor([1.0, -2.0], dtype=torch.float64)
    x = torch.tensor([0.5, 0.5], dtype=torch.float64)
    server = algo.init_server(x)
    ctx = RoundContext(0, 0, 0, 10, loop_steps, LR)
    msg, _ = local_training(algo, ctx, algo.broadcast(server), algo.init_client(x),
                            lambda y: (0.5 * (y - b).square().sum(), y - b))
    meta = (loop_steps + 1) // 2
    assert msg.num_steps == meta
    want = _perfedavg_reference(x, b, meta, alpha, LR, variant == "hf")
    torch.testing.assert_close(x - msg.delta, want, rtol=1e-6 if variant == "hf" else 1e-12, atol=1e-9)
    assert algo.personalization().steps == 1 and algo.personalization().lr == alpha
