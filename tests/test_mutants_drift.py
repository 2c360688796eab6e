"""Exact state updates of the drift-corrected and normalised methods, against a reference.

Written to kill mutation-testing survivors (docs/testing.md): the exact-optimum tests
elsewhere pass with a wrong constant in a state update (Delta K eta instead of
Delta / (K eta), P instead of M, ...). Here two rounds on tiny quadratics
f_i(y) = ||y - b_i||^2 / 2 (float64) with unequal n_i, unequal K_i, partial
participation (M < N, a client taking part twice) and client momentum are replayed by a
reference written from the papers' formulas (plain loops, no fedtorch code), and every
server and client state is compared with it.
"""

from __future__ import annotations

import pytest
import torch

from fedtorch.algorithms import LocalSGD, get_algorithm
from fedtorch.algorithms.fedexp import extrapolation
from fedtorch.protocol import ClientMessage, FederationInfo

from simulate import ToyClient, simulate

SIZES = [6, 10, 20, 4]  # n_i
STEPS = [2, 3, 1, 5]  # K_i
COHORTS = [[1, 3], [0, 1]]  # round 0, round 1 (client 1 twice)
LR = 0.1


def _targets(dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(dim, generator=g, dtype=torch.float64) + 2.0 * i for i in range(len(SIZES))]


def _clients(b):
    return [ToyClient(lambda y, b=bi: (0.5 * (y - b).square().sum(), y - b), n, k) for bi, n, k in zip(b, SIZES, STEPS)]


def heavy_ball(y, direction, steps, lr, m):
    """torch.optim.SGD(lr, momentum=m) on a direction field: buf = m buf + d; y -= lr buf."""
    y, buf = y.clone(), None
    for _ in range(steps):
        d = direction(y)
        buf = d if buf is None else m * buf + d
        y = y - lr * buf
    return y


def tau(k, m):
    """Displacement of k heavy-ball steps along a constant direction, in units of lr:
    sum_{j<k} (1 - m^{j+1}) / (1 - m) (FedNova's a_i), written in closed form."""
    return k if m == 0 else (k - m * (1 - m**k) / (1 - m)) / (1 - m)


def _weights(cohort, weighting):
    """(p_i: the round's weights, q_i: the population weights n_i / n or 1 / N)."""
    n = [SIZES[i] for i in cohort]
    if weighting == "samples":
        return [ni / sum(n) for ni in n], [ni / sum(SIZES) for ni in n]
    return [1 / len(n)] * len(n), [1 / len(SIZES)] * len(n)


def _run(name, weighting, momentum, **hp):
    cls = get_algorithm(name)
    fed = FederationInfo(len(SIZES), LR, weighting, sum(SIZES), sum(STEPS) / len(STEPS))
    algo = cls(cls.Hparams(**hp), LocalSGD(momentum=momentum), None, fed)
    b = _targets()
    x0 = torch.zeros(3, dtype=torch.float64)
    server, states = simulate(algo, _clients(b), x0, 2, LR, weighting, selected=lambda t: COHORTS[t])
    return b, x0, server, states


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_tau_reference_is_the_heavy_ball_displacement():
    """The closed form used below is the sum of (1 - m^{j+1}) / (1 - m) over j < k."""
    for k in (1, 2, 5):
        assert tau(k, 0.9) == pytest.approx(sum((1 - 0.9 ** (j + 1)) / 0.1 for j in range(k)), rel=1e-12)
        y = heavy_ball(torch.zeros(1, dtype=torch.float64), lambda y: torch.ones(1, dtype=torch.float64), k, 1.0, 0.9)
        assert -y.item() == pytest.approx(tau(k, 0.9), rel=1e-12)


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_scaffold_control_variates_and_model_match_algorithm_1(weighting, momentum):
    """c_i^+ = c_i - c + Delta_i / (tau_i eta_l) (option II, tau_i = K_i without momentum),
    c <- c + sum_S q_i dc_i ((M/N) mean under uniform), x <- x - sum_S p_i Delta_i."""
    b, x, server, states = _run("scaffold", weighting, momentum)
    c, ci = torch.zeros(3, dtype=torch.float64), {i: torch.zeros(3, dtype=torch.float64) for i in range(4)}
    for cohort in COHORTS:
        p, q = _weights(cohort, weighting)
        deltas, dcs = [], []
        for i in cohort:
            corr = c - ci[i]
            y = heavy_ball(x, lambda y, i=i, corr=corr: (y - b[i]) + corr, STEPS[i], LR, momentum)
            delta = x - y
            new = ci[i] - c + delta / (LR * tau(STEPS[i], momentum))
            deltas.append(delta)
            dcs.append(new - ci[i])
            ci[i] = new
        x = x - sum(pi * d for pi, d in zip(p, deltas))
        c = c + sum(qi * d for qi, d in zip(q, dcs))
    _close(server.x, x)
    _close(server.extra["c"], c)
    for i in (0, 1, 3):
        _close(states[i]["c"], ci[i])
    assert 2 not in states


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_feddyn_h_and_client_gradient_state_match_the_paper(weighting, momentum):
    """d = g - grad_i + alpha (y - x^t); grad_i <- grad_i + alpha Delta_i;
    h <- h + alpha sum_S q_i Delta_i; x <- x - (sum_S p_i Delta_i + h / alpha)."""
    alpha = 0.3
    b, x, server, states = _run("feddyn", weighting, momentum, alpha=alpha)
    h, gi = torch.zeros(3, dtype=torch.float64), {i: torch.zeros(3, dtype=torch.float64) for i in range(4)}
    for cohort in COHORTS:
        p, q = _weights(cohort, weighting)
        deltas = []
        for i in cohort:
            y = heavy_ball(x, lambda y, i=i, x=x: (y - b[i]) - gi[i] + alpha * (y - x), STEPS[i], LR, momentum)
            deltas.append(x - y)
            gi[i] = gi[i] + alpha * (x - y)
        h = h + alpha * sum(qi * d for qi, d in zip(q, deltas))
        x = x - (sum(pi * d for pi, d in zip(p, deltas)) + h / alpha)
    _close(server.extra["h"], h)
    _close(server.x, x)
    for i in (0, 1, 3):
        _close(states[i]["grad"], gi[i])


def _scaffnew_reference(b, x, steps_of, gop, momentum):
    """Scaffnew by hand over COHORTS (Mishchenko et al. 2022, Alg. 2 with gamma/p = ``gop``):
    xhat_i = y_K - gop h_i, x = sum_S p_i xhat_i, h_i = (x - xhat_i) / gop. Returns (x, h)."""
    h = {i: torch.zeros(3, dtype=torch.float64) for i in range(4)}
    for t, cohort in enumerate(COHORTS):
        w, _ = _weights(cohort, "samples")
        xhat = {i: heavy_ball(x, lambda y, i=i: (y - b[i]) - h[i], steps_of(t, i), LR, momentum) - gop * h[i] for i in cohort}
        x = sum(wi * xhat[i] for wi, i in zip(w, cohort))
        for i in cohort:
            h[i] = (x - xhat[i]) / gop
    return x, h


@pytest.mark.parametrize(("p", "momentum"), [(0.25, 0.0), (None, 0.0), (0.25, 0.5), (None, 0.5)])
def test_scaffnew_h_uses_gamma_over_p_shared_by_every_client(p, momentum):
    """xhat_i = y_K - (gamma/p) h_i, x^{t+1} = sum_S p_j xhat_j,
    h_i = (p/gamma)(x^{t+1} - xhat_i); gamma/p -> gamma tau(1/p) with momentum; default
    p = 1 / mean K_i = 4 / 11 here (random_steps=false: each client takes its own K_i)."""
    b, x, server, states = _run("scaffnew", "samples", momentum, p=p)
    share = 0.25 if p is not None else 1 / (sum(STEPS) / len(STEPS))
    gop = LR / share if momentum == 0 else LR * tau(1 / share, momentum)
    x, h = _scaffnew_reference(b, x, lambda t, i: STEPS[i], gop, momentum)
    _close(server.x, x)
    for i in (0, 1, 3):
        _close(states[i]["h"], h[i])


def test_scaffnew_random_steps_share_one_geometric_draw_and_the_same_h_rule():
    """random_steps=true: every client of a round takes the same K ~ Geometric(p) on
    {1, 2, ...} (mean 1/p), and h_i follows the same (p/gamma) rule with that K."""
    cls = get_algorithm("scaffnew")
    algo = cls(cls.Hparams(random_steps=True, p=0.25), LocalSGD(), None, FederationInfo(4, LR))
    draws = [algo.num_local_steps(t, 0, 7, 99) for t in range(4000)]
    assert min(draws) >= 1 and abs(sum(draws) / len(draws) - 4.0) < 0.25  # sd of the mean: 0.055
    share = sum(d == 1 for d in draws) / len(draws)
    assert abs(share - 0.25) < 0.03  # P(K = 1) = p
    assert all(algo.num_local_steps(t, c, 7, 99) == draws[t] for t in range(20) for c in range(4))

    b = _targets()
    x = torch.zeros(3, dtype=torch.float64)
    server, states = simulate(algo, _clients(b), x, 2, LR, "samples", selected=lambda t: COHORTS[t])
    x, h = _scaffnew_reference(b, x, lambda t, i: algo.num_local_steps(t, 0, 0, 99), LR / 0.25, 0.0)
    _close(server.x, x)
    for i in (0, 1, 3):
        _close(states[i]["h"], h[i])


def test_fedexp_extrapolation_above_one_is_the_papers_ratio():
    """eta_g = sum_i ||Delta_i||^2 / (2 M (||mean||^2 + eps)) for M = 3 nearly opposite
    updates of P = 2 (so M != P), eps = 0.1: (1 + 1.01 + 0.0125) / (6 (0.0025 + 0.1))."""
    deltas = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.1, -0.05]], dtype=torch.float64)
    mean = deltas.mean(dim=0)  # (0.0333, 0.0167): ||mean||^2 = 0.0013889
    want = (1.0 + 1.01 + 0.0125) / (2 * 3 * ((0.1 / 3) ** 2 + (0.05 / 3) ** 2 + 0.1))
    assert want > 1
    assert extrapolation(deltas, 0.1).item() == pytest.approx(want, rel=1e-12)
    assert extrapolation(deltas, 0.1, mean).item() == pytest.approx(want, rel=1e-12)
    assert extrapolation(deltas[:1], 0.0).item() == 1.0  # one client: ratio 1/2, clamped to 1

    cls = get_algorithm("fedexp")
    algo = cls(cls.Hparams(eps=0.1))
    x0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    msgs = ClientMessage.stack([ClientMessage(delta=d, num_samples=n, num_steps=1, loss=0.0)
                                for d, n in zip(deltas, (1, 5, 30))])
    weights = torch.tensor([1 / 36, 5 / 36, 30 / 36], dtype=torch.float64)  # FedExP averages uniformly anyway
    server = algo.aggregate(algo.init_server(x0), msgs, weights)
    _close(server.x, x0 - want * mean)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fednova_normalises_by_a_i_with_momentum_and_keeps_the_dtype(momentum):
    """On linear losses (constant g_i) momentum SGD moves Delta_i = eta a_i g_i, a_i the
    heavy-ball displacement; FedNova's pseudo-gradient tau_eff sum p_i Delta_i / a_i with
    tau_eff = sum p_i a_i is then tau_eff eta sum p_i g_i (float32 kept)."""
    g = [torch.tensor(v, dtype=torch.float32) for v in ([1.0, -2.0], [0.5, 0.5], [-1.0, 3.0])]
    sizes, steps = [10, 30, 20], [1, 3, 5]
    clients = [ToyClient(lambda y, gi=gi: ((gi * y).sum(), gi.clone()), n, k) for gi, n, k in zip(g, sizes, steps)]
    cls = get_algorithm("fednova")
    algo = cls(None, LocalSGD(momentum=momentum), None, FederationInfo(3, LR))
    x0 = torch.tensor([0.5, -0.5], dtype=torch.float32)
    server, _ = simulate(algo, clients, x0, 1, LR, "samples")
    p = [n / 60 for n in sizes]
    a = [sum((1 - momentum ** (j + 1)) / (1 - momentum) for j in range(k)) for k in steps]
    tau_eff = sum(pi * ai for pi, ai in zip(p, a))
    want = x0.double() - tau_eff * LR * sum(pi * gi.double() for pi, gi in zip(p, g))
    assert server.x.dtype == torch.float32
    torch.testing.assert_close(server.x.double(), want, rtol=1e-5, atol=1e-6)
    if momentum:  # FedAvg's average would differ: the normalisation is visible
        fedavg = x0.double() - sum(pi * LR * ai * gi.double() for pi, ai, gi in zip(p, a, g))
        assert (server.x.double() - fedavg).abs().max() > 1e-2
