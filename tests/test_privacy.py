"""fedtorch.privacy: DP-FedAvg clipping and noise, sampling, adaptive clipping, accounting, DP-SGD.

Tolerances are stated where a check is statistical or float-rounded; accounting checks are
exact float equality against dp_accounting called directly here.
"""

from __future__ import annotations

import math

import dp_accounting as dp
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedtorch.flat import ParamLayout
from fedtorch.privacy import (
    Accountant, AdaptiveClip, DPFedAvg, clip_updates, dp_sgd_gradient, epsilon, expected_clients, noise_multiplier_for,
    noisy_mean, per_sample_gradients, poisson_sample,
)

CLIP_RTOL = 1e-6  # a clipped float32 row's norm may exceed C by one rounding of the scaled row


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def stack(m: int = 64, p: int = 300, seed: int = 0) -> torch.Tensor:
    """Rows of very different norms (1e-3 .. 1e3), a zero row, all float32."""
    g = gen(seed)
    d = torch.randn(m, p, generator=g) * torch.logspace(-4, 2, m)[:, None]
    d[3] = 0.0
    return d


# ---- clipping ---------------------------------------------------------------------------
def test_clipped_norms_within_c_and_inside_rows_unchanged_exactly():
    d = stack()
    c = 1.0
    out = clip_updates(d, c)
    norms_after = torch.linalg.vector_norm(out.clipped.double(), dim=1)
    norms_before = torch.linalg.vector_norm(d.double(), dim=1)
    assert bool((norms_after <= c * (1 + CLIP_RTOL)).all())
    inside = norms_before <= c
    assert 0 < int(inside.sum()) < d.shape[0]  # both kinds of rows are present
    assert torch.equal(out.clipped[inside], d[inside])  # bit for bit
    assert torch.equal(out.clipped_mask, ~inside)
    assert torch.equal(out.norms, norms_before)
    # clipped rows are scaled (direction kept), onto the sphere, not shrunk further
    assert torch.allclose(norms_after[~inside], torch.ones_like(norms_after[~inside]), rtol=CLIP_RTOL, atol=0)
    cos = F.cosine_similarity(out.clipped[~inside].double(), d[~inside].double(), dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-6)


def test_clip_inf_and_empty_stack():
    d = stack()
    assert torch.equal(clip_updates(d, math.inf).clipped, d)
    empty = clip_updates(torch.empty(0, 5), 1.0)
    assert empty.clipped.shape == (0, 5) and empty.norms.shape == (0,)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), True, "1"])
def test_clip_rejects_bad_norm(bad):
    with pytest.raises(ValueError, match=r"privacy\.clip="):
        clip_updates(stack(), bad)


def test_clip_rejects_non_finite_rows():
    d = stack()
    d[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        clip_updates(d, 1.0)


# ---- noisy mean -------------------------------------------------------------------------
def test_noisy_mean_without_noise_is_clipped_sum_over_denominator_exactly():
    clipped = clip_updates(stack(), 0.5).clipped
    got = noisy_mean(clipped, 0.0, 0.5, 12.5, gen(1))
    want = (clipped.double().sum(dim=0) / 12.5).float()
    assert torch.equal(got, want)


def test_noisy_mean_noise_std_matches_sigma_c_over_denominator():
    sigma, c, denom, p, draws = 1.3, 0.7, 20.0, 5000, 40
    clipped = torch.zeros(4, p)
    g = gen(2)
    noise = torch.stack([noisy_mean(clipped, sigma, c, denom, g) for _ in range(draws)]).double()
    n = noise.numel()  # 2e5 independent N(0, s^2) draws
    s = sigma * c / denom
    # std estimate: relative standard error 1/sqrt(2n) = 0.16 %; allow 5 SE. mean: 5 SE of s/sqrt(n)
    assert abs(noise.std().item() / s - 1) < 5 / math.sqrt(2 * n)
    assert abs(noise.mean().item()) < 5 * s / math.sqrt(n)
    # coordinates and draws are independent: correlation of consecutive draws ~ 0 (5 SE)
    corr = torch.corrcoef(torch.stack([noise[:-1].flatten(), noise[1:].flatten()]))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(n)


def test_noisy_mean_deterministic_per_generator_and_empty_sample_is_pure_noise():
    clipped = clip_updates(stack(), 1.0).clipped
    a = noisy_mean(clipped, 1.0, 1.0, 10.0, gen(7))
    b = noisy_mean(clipped, 1.0, 1.0, 10.0, gen(7))
    c = noisy_mean(clipped, 1.0, 1.0, 10.0, gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    p = clipped.shape[1]
    pure = noisy_mean(torch.empty(0, p), 1.0, 1.0, 10.0, gen(7))
    want = (torch.randn(p, generator=gen(7), dtype=torch.float64) * 1.0 / 10.0).float()
    assert torch.equal(pure, want)


def test_noisy_mean_refuses_unclipped_rows_and_bad_parameters():
    d = stack()
    with pytest.raises(ValueError, match="clip the updates first"):
        noisy_mean(d, 1.0, 1.0, 10.0, gen(0))
    clipped = clip_updates(d, 1.0).clipped
    with pytest.raises(ValueError, match=r"privacy\.noise_multiplier=-1"):
        noisy_mean(clipped, -1.0, 1.0, 10.0, gen(0))
    with pytest.raises(ValueError, match=r"privacy\.noise_multiplier=1.0 .*finite clip"):
        noisy_mean(clipped, 1.0, math.inf, 10.0, gen(0))
    with pytest.raises(ValueError, match=r"privacy\.denominator=0"):
        noisy_mean(clipped, 1.0, 1.0, 0, gen(0))
    with pytest.raises(ValueError, match="torch.Generator"):
        noisy_mean(clipped, 1.0, 1.0, 10.0, None)


def test_expected_clients_is_the_fixed_denominator():
    assert expected_clients("poisson", 1000, 0.013) == 0.013 * 1000
    assert expected_clients("fixed", 100, 0.1) == 10.0
    with pytest.raises(ValueError, match=r"privacy\.sampling_rate=0.015 .*whole number"):
        expected_clients("fixed", 100, 0.015)
    with pytest.raises(ValueError, match=r"privacy\.sampling='uniform'"):
        expected_clients("uniform", 100, 0.1)


# ---- sampling ---------------------------------------------------------------------------
def test_poisson_sample_rate_sorted_deterministic_and_possibly_empty():
    n, q = 2000, 0.05
    ids = poisson_sample(n, q, gen(3))
    assert torch.equal(ids, poisson_sample(n, q, gen(3)))
    assert torch.equal(ids, ids.sort().values) and ids.unique().numel() == ids.numel()
    assert ids.dtype == torch.int64 and (ids >= 0).all() and (ids < n).all()
    counts = torch.tensor([poisson_sample(n, q, gen(s)).numel() for s in range(200)], dtype=torch.float64)
    # mean of 200 Binomial(2000, 0.05) counts: expected 100, SE sqrt(95/200) = 0.69; allow 5 SE
    assert abs(counts.mean().item() - n * q) < 5 * math.sqrt(n * q * (1 - q) / 200)
    assert abs(counts.var().item() / (n * q * (1 - q)) - 1) < 0.5  # binomial, not fixed-size
    empties = sum(poisson_sample(3, 0.01, gen(s)).numel() == 0 for s in range(50))
    assert empties > 40  # P(empty) = 0.99^3 = 0.97


# ---- accounting -------------------------------------------------------------------------
@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_poisson_epsilon_equals_the_library(accountant):
    q, sigma, steps, delta = 0.02, 1.1, 150, 1e-5
    lib = dp.rdp.RdpAccountant() if accountant == "rdp" else dp.pld.PLDAccountant()
    lib.compose(dp.PoissonSampledDpEvent(q, dp.GaussianDpEvent(sigma)), steps)
    assert epsilon(sigma, q, steps, delta, "poisson", accountant) == lib.get_epsilon(delta)


def test_fixed_size_epsilon_equals_the_library_replace_one_event():
    n, m, sigma, steps, delta = 200, 10, 1.1, 60, 1e-5
    lib = dp.rdp.RdpAccountant(neighboring_relation=dp.NeighboringRelation.REPLACE_ONE)
    # replacing one clipped update moves the sum by 2C: noise multiplier sigma/2 per sensitivity
    lib.compose(dp.SampledWithoutReplacementDpEvent(n, m, dp.GaussianDpEvent(sigma / 2)), steps)
    assert epsilon(sigma, m / n, steps, delta, "fixed", "rdp", num_clients=n) == lib.get_epsilon(delta)
    with pytest.raises(ValueError, match=r"privacy\.accountant='pld'"):
        epsilon(sigma, m / n, steps, delta, "fixed", "pld", num_clients=n)
    with pytest.raises(ValueError, match=r"privacy\.num_clients=None"):
        epsilon(sigma, m / n, steps, delta, "fixed", "rdp")


def test_epsilon_edge_cases_and_errors():
    assert epsilon(1.0, 0.1, 0, 1e-5) == 0.0
    assert epsilon(0.0, 0.1, 5, 1e-5) == math.inf
    assert epsilon(1.0, 0.1, 20, 1e-5) < epsilon(1.0, 0.1, 40, 1e-5) < epsilon(0.8, 0.1, 40, 1e-5)
    for kwargs, key in [({"sampling_rate": 0.0}, "sampling_rate"), ({"steps": -1}, "steps"), ({"delta": 1.0}, "delta"),
                        ({"accountant": "prv"}, "accountant")]:
        args = {"noise_multiplier": 1.0, "sampling_rate": 0.1, "steps": 3, "delta": 1e-5} | kwargs
        with pytest.raises(ValueError, match=rf"privacy\.{key}="):
            epsilon(**args)


@pytest.mark.parametrize("accountant,steps", [("rdp", 100), ("pld", 20)])
def test_noise_multiplier_for_round_trips(accountant, steps):
    target, q, delta = 2.0, 0.05, 1e-5
    z = noise_multiplier_for(target, q, steps, delta, accountant=accountant, tol=1e-4)
    eps = epsilon(z, q, steps, delta, accountant=accountant)
    assert eps <= target
    assert eps > target - 0.02  # close: the calibration's tol of 1e-4 in z costs far less than this
    assert epsilon(z - 2e-3, q, steps, delta, accountant=accountant) > target  # and z is (near) minimal


def test_accountant_counts_rounds_and_reports_epsilon_after_each():
    acc = Accountant(1.0, 0.05, 1e-5, "poisson", "rdp")
    state = acc.init_state()
    assert state["steps"].dtype == torch.int64 and int(state["steps"]) == 0 and acc.epsilon(state) == 0.0
    seen = []
    for t in range(1, 6):
        new = acc.step(state)
        assert int(state["steps"]) == t - 1  # the old state is not modified
        state = new
        seen.append(acc.epsilon(state))
        assert seen[-1] == epsilon(1.0, 0.05, t, 1e-5)
    assert seen == sorted(seen) and len(set(seen)) == 5
    assert int(acc.step(state, rounds=10)["steps"]) == 15
    with pytest.raises(ValueError, match="steps"):
        acc.epsilon({"steps": torch.tensor(2.0)})
    with pytest.raises(ValueError, match=r"privacy\.delta="):
        Accountant(1.0, 0.05, 0.0)


# ---- adaptive clipping ------------------------------------------------------------------
def test_adaptive_noise_split_composes_to_the_accounted_multiplier():
    """z_Delta and the count's effective 2 sigma_b compose (per the library's RDP) to z."""
    z, sigma_b, q, steps, delta = 1.0, 2.5, 0.05, 50, 1e-5
    z_delta = AdaptiveClip(count_stddev=sigma_b).update_noise_multiplier(z)
    assert z_delta > z
    both = dp.PoissonSampledDpEvent(q, dp.ComposedDpEvent([dp.GaussianDpEvent(z_delta), dp.GaussianDpEvent(2 * sigma_b)]))
    lib = dp.rdp.RdpAccountant().compose(both, steps).get_epsilon(delta)
    assert lib == pytest.approx(epsilon(z, q, steps, delta), rel=1e-9)
    with pytest.raises(ValueError, match=r"privacy\.clipped_count_stddev=0.4"):
        AdaptiveClip(count_stddev=0.4).update_noise_multiplier(1.0)


@pytest.mark.parametrize("gamma", [0.5, 0.8])
def test_adaptive_clip_tracks_the_gamma_quantile_of_lognormal_norms(gamma):
    m, rounds = 100, 400
    ada = AdaptiveClip(target_quantile=gamma, learning_rate=0.2, count_stddev=m / 20)
    state = ada.init_state(0.05)  # start 20x (gamma=0.5) below the quantile
    g_norms, g_noise = gen(11), gen(12)
    fractions, clips = [], []
    for _ in range(rounds):
        norms = torch.exp(torch.randn(m, generator=g_norms, dtype=torch.float64))  # lognormal(0, 1)
        fractions.append(float((norms <= state["clip"]).double().mean()))
        clips.append(float(state["clip"]))
        state, b_bar = ada.apply(state, norms, float(m), g_noise)
        assert 0.0 <= b_bar <= 1.0
    true_quantile = math.exp(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(gamma)).item())
    tail = slice(rounds // 2, None)
    # after burn-in: unclipped fraction within 0.05 of gamma on average, C within 15 % of the quantile
    assert abs(sum(fractions[tail]) / len(fractions[tail]) - gamma) < 0.05
    mean_clip = sum(clips[tail]) / len(clips[tail])
    assert abs(mean_clip / true_quantile - 1) < 0.15
    assert clips[0] < 0.2 * true_quantile  # it really moved there


def test_adaptive_geometric_step_is_the_paper_formula():
    ada = AdaptiveClip(target_quantile=0.5, learning_rate=0.2, count_stddev=0.0)
    state = ada.init_state(2.0)
    norms = torch.tensor([1.0, 1.5, 2.0, 3.0, 5.0])  # 3 of 5 unclipped (norm <= C is unclipped)
    new, b_bar = ada.apply(state, norms, 5.0, gen(0))
    assert b_bar == pytest.approx(0.6, abs=1e-15)
    assert float(new["clip"]) == pytest.approx(2.0 * math.exp(-0.2 * (0.6 - 0.5)), rel=1e-15)
    assert float(state["clip"]) == 2.0  # input state untouched
    with pytest.raises(ValueError, match=r"privacy\.target_quantile=1.5"):
        AdaptiveClip(target_quantile=1.5)


# ---- DP-FedAvg composition --------------------------------------------------------------
def test_dpfedavg_apply_composes_clip_noise_and_adaptation():
    d = stack(m=10)
    mech = DPFedAvg(noise_multiplier=0.0, clip=1.0, num_clients=100, sampling_rate=0.1, sampling="fixed")
    out = mech.apply(d, mech.init_state(), gen(0))
    assert torch.equal(out.mean, (clip_updates(d, 1.0).clipped.double().sum(0) / 10).float())
    assert out.unclipped_fraction is None and float(out.state["clip"]) == 1.0
    with pytest.raises(ValueError, match=r"privacy\.clipped_count_stddev"):
        DPFedAvg(1.0, 1.0, 1000, 0.01, adaptive=AdaptiveClip(count_stddev=0.5))
    ada = DPFedAvg(1.0, 1.0, 1000, 0.01, adaptive=AdaptiveClip(count_stddev=0.6))
    assert ada.update_noise_multiplier == pytest.approx((1.0 - (1.2) ** -2) ** -0.5)
    r = ada.apply(d, ada.init_state(), gen(5))
    assert r.unclipped_fraction is not None and float(r.state["clip"]) != 1.0
    assert len(ada.sample(gen(1))) == len(poisson_sample(1000, 0.01, gen(1)))
    assert ada.accountant(1e-5).epsilon({"steps": torch.tensor(3)}) == epsilon(1.0, 0.01, 3, 1e-5)


# ---- DP-SGD -----------------------------------------------------------------------------
def small_net() -> nn.Module:
    torch.manual_seed(0)  # initial weights only; the tests draw nothing else from the global RNG
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def batch(b: int = 8, seed: int = 4):
    g = gen(seed)
    return torch.randn(b, 1, 6, 6, generator=g), torch.randint(0, 3, (b,), generator=g)


def plain_grad(net, layout, flat, x, y) -> torch.Tensor:
    layout.load(net, flat)
    names = [n for n, _ in net.named_parameters()]
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    return layout.cat(dict(zip(names, grads)))


def test_dp_sgd_without_clipping_or_noise_is_the_mean_gradient():
    net = small_net()
    layout = ParamLayout.of(net)
    assert any(layout.channels_last)  # the conv weight is stored channels-last: the layout is exercised
    flat = layout.flatten(net)
    x, y = batch()
    got = dp_sgd_gradient(net, layout, flat, x, y, F.cross_entropy, math.inf, 0.0, gen(0))
    assert torch.allclose(got, plain_grad(net, layout, flat, x, y), rtol=1e-5, atol=1e-7)
    # and each per-sample row is that sample's own gradient
    ps = per_sample_gradients(net, layout, flat, x, y, F.cross_entropy)
    assert torch.allclose(ps[2], plain_grad(net, layout, flat, x[2:3], y[2:3]), rtol=1e-5, atol=1e-7)


def test_dp_sgd_per_sample_clipping_bounds_each_contribution():
    net = small_net()
    layout = ParamLayout.of(net)
    flat = layout.flatten(net)
    x, y = batch(b=8)
    x[0] *= 1e3  # one sample with a huge gradient: a large input, labelled with its least likely class
    with torch.no_grad():
        y[0] = net(x[:1]).argmin()
    c = 0.1
    ps = per_sample_gradients(net, layout, flat, x, y, F.cross_entropy)
    assert torch.linalg.vector_norm(ps[0]).item() > 100 * c
    full = dp_sgd_gradient(net, layout, flat, x, y, F.cross_entropy, c, 0.0, gen(0)).double()
    rest = dp_sgd_gradient(net, layout, flat, x[1:], y[1:], F.cross_entropy, c, 0.0, gen(0)).double()
    contribution = 8 * full - 7 * rest  # = clip_C(g_0)
    assert torch.linalg.vector_norm(contribution).item() <= c * (1 + 1e-5)
    assert torch.linalg.vector_norm(contribution).item() >= c * (1 - 1e-5)  # clipped to the sphere, not dropped
    plain = plain_grad(net, layout, flat, x, y).double()
    assert torch.linalg.vector_norm(plain).item() > 10 * torch.linalg.vector_norm(full).item()


def test_dp_sgd_noise_is_sigma_c_over_b_and_deterministic():
    net = small_net()
    layout = ParamLayout.of(net)
    flat = layout.flatten(net)
    x, y = batch(b=4)
    c, sigma = 0.5, 2.0
    clean = dp_sgd_gradient(net, layout, flat, x, y, F.cross_entropy, c, 0.0, gen(0)).double()
    a = dp_sgd_gradient(net, layout, flat, x, y, F.cross_entropy, c, sigma, gen(9))
    assert torch.equal(a, dp_sgd_gradient(net, layout, flat, x, y, F.cross_entropy, c, sigma, gen(9)))
    want = (clean * 4 + sigma * c * torch.randn(layout.numel, generator=gen(9), dtype=torch.float64)) / 4
    assert torch.allclose(a.double(), want, rtol=1e-5, atol=1e-6)


def test_dp_sgd_refuses_batchnorm_and_noise_without_clip():
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    layout = ParamLayout.of(net)
    x, y = batch()
    with pytest.raises(ValueError, match="BatchNorm"):
        dp_sgd_gradient(net, layout, layout.flatten(net), x, y, F.cross_entropy, 1.0, 1.0, gen(0))
    net = small_net()
    layout = ParamLayout.of(net)
    with pytest.raises(ValueError, match=r"privacy\.noise_multiplier=1.0"):
        dp_sgd_gradient(net, layout, layout.flatten(net), x, y, F.cross_entropy, math.inf, 1.0, gen(0))
