"""Byzantine-robust aggregators and attacks (fedtorch.robust, issue 16 item 4).

Tier (a): each rule equals an independent reference (numpy / scipy / brute-force loops) or a
hand-built case; tier (b): equivalences (Bulyan with f=0, CC with tau=inf and L=1 are the mean);
tier (c): robustness numbers on a synthetic problem with 20 % sign-flipping attackers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedtorch.robust import (
    AGGREGATORS,
    ATTACKS,
    Bulyan,
    CenteredClipping,
    GaussianNoise,
    Krum,
    LabelFlip,
    Mean,
    Median,
    MultiKrum,
    Scale,
    SignFlip,
    TrimmedMean,
    attackers,
    flip_labels,
    krum_scores,
    make_aggregator,
    make_attack,
    pairwise_sq_distances,
    poison,
)
from fedtorch.seeding import generator


def rows(m: int, p: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, p, generator=generator(seed, "test_robust", m, p))


def uniform(m: int) -> torch.Tensor:
    return torch.full((m,), 1.0 / m, dtype=torch.float64)


# ---------------------------------------------------------------- coordinate-wise rules


@pytest.mark.parametrize("m", [1, 2, 7, 10])
def test_median_equals_numpy_per_coordinate(m):
    x = rows(m, 33)
    got = Median().apply(x, uniform(m)).value
    want = np.median(x.double().numpy(), axis=0).astype(np.float32)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), want)


def trimmed_reference(x: np.ndarray, beta: float) -> np.ndarray:
    """Yin et al. Def. 2 by hand: sort each coordinate, drop int(beta*M) per side, average."""
    m = x.shape[0]
    b = int(beta * m)
    return np.sort(x, axis=0)[b : m - b].mean(axis=0)


@pytest.mark.parametrize("m, beta", [(10, 0.1), (10, 0.15), (10, 0.3), (11, 0.2), (20, 0.45), (5, 0.0)])
def test_trimmed_mean_equals_reference_and_scipy(m, beta):
    x = rows(m, 40, seed=1)
    got = TrimmedMean(beta=beta).apply(x, uniform(m)).value.double().numpy()
    np.testing.assert_allclose(got, trimmed_reference(x.double().numpy(), beta), rtol=1e-6, atol=1e-7)
    stats = pytest.importorskip("scipy.stats")
    np.testing.assert_allclose(got, stats.trim_mean(x.double().numpy(), beta, axis=0), rtol=1e-6, atol=1e-7)


def test_trimmed_mean_drops_outliers_on_both_sides():
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0], [-1000.0], [1000.0]])
    assert TrimmedMean(beta=1 / 6).apply(x, uniform(6)).value.item() == 2.5


def test_trimmed_mean_validation():
    with pytest.raises(ValueError, match=r"robust\.beta=0\.5 is not allowed: must be in \[0, 0\.5\)"):
        TrimmedMean(beta=0.5)
    with pytest.raises(ValueError, match=r"robust\.beta=0\.05 .*M=10 .*beta \* M >= 1"):
        TrimmedMean(beta=0.05).apply(rows(10, 3), uniform(10))


# ---------------------------------------------------------------- Krum / Multi-Krum


def krum_scores_reference(x: np.ndarray, f: int) -> np.ndarray:
    m = x.shape[0]
    scores = []
    for i in range(m):
        d = sorted(float(((x[i] - x[j]) ** 2).sum()) for j in range(m) if j != i)
        scores.append(sum(d[: m - f - 2]))
    return np.array(scores)


@pytest.mark.parametrize("m, f", [(5, 1), (9, 3), (12, 2)])
def test_krum_scores_sum_the_m_minus_f_minus_2_nearest_squared_distances(m, f):
    x = rows(m, 17, seed=2)
    got = krum_scores(pairwise_sq_distances(x), m - f - 2).numpy()
    np.testing.assert_allclose(got, krum_scores_reference(x.double().numpy(), f), rtol=1e-12)


def clusters(m: int, f: int, seed: int = 3) -> torch.Tensor:
    """m - f honest rows around 0 (std 1e-2) and f attackers in a much tighter cluster at 100."""
    x = 1e-2 * rows(m, 8, seed)
    x[m - f :] = 100.0 + 1e-4 * rows(f, 8, seed + 1)
    return x


@pytest.mark.parametrize("m, f", [(10, 3), (11, 4), (7, 2)])
def test_krum_picks_an_honest_row_when_attackers_are_far(m, f):
    x = clusters(m, f)
    out = Krum(f=f).apply(x, uniform(m))
    (best,) = out.selected.tolist()
    assert best < m - f
    assert torch.equal(out.value, x[best])
    ref = krum_scores_reference(x.double().numpy(), f)
    assert best == int(np.argmin(ref))


def test_multi_krum_without_attackers_is_the_mean_of_the_selected_rows():
    m, f = 10, 2
    x = rows(m, 12, seed=4)
    out = MultiKrum(f=f).apply(x, uniform(m))
    assert out.selected.tolist() == sorted(np.argsort(krum_scores_reference(x.double().numpy(), f))[: m - f].tolist())
    assert torch.allclose(out.value, x[out.selected].double().mean(0).float(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_multi_krum_selects_the_m_lowest_reference_scores_for_every_m(seed):
    m, f = 9, 2
    x = rows(m, 6, seed=20 + seed)
    order = np.argsort(krum_scores_reference(x.double().numpy(), f), kind="stable")
    assert Krum(f=f).apply(x, uniform(m)).selected.tolist() == [int(order[0])]
    for keep in range(1, m - f + 1):
        assert MultiKrum(f=f, m=keep).apply(x, uniform(m)).selected.tolist() == sorted(order[:keep].tolist())


def test_multi_krum_excludes_far_attackers():
    m, f = 10, 3
    out = MultiKrum(f=f).apply(clusters(m, f), uniform(m))
    assert out.selected.tolist() == list(range(m - f))


def test_krum_and_multi_krum_validate_f_and_m():
    with pytest.raises(ValueError, match=r"robust\.f=2 is not allowed: Krum needs M > 2f \+ 2 .*M=6"):
        Krum(f=2).apply(rows(6, 3), uniform(6))
    Krum(f=2).apply(rows(7, 3), uniform(7))
    with pytest.raises(ValueError, match=r"robust\.m=9 is not allowed: .*at most M - f = 8"):
        MultiKrum(f=2, m=9).apply(rows(10, 3), uniform(10))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=r"robust\.f="):
            Krum(f=bad)
    with pytest.raises(ValueError, match=r"robust\.m=0"):
        MultiKrum(f=1, m=0)


# ---------------------------------------------------------------- Bulyan


def bulyan_reference(x: np.ndarray, f: int) -> np.ndarray:
    """El Mhamdi et al. 2018 by loops: recursive Krum (>= 1 neighbour), then per coordinate the
    mean of the beta values closest to the median of the selection."""
    m = x.shape[0]
    theta, beta = m - 2 * f, m - 4 * f
    left, chosen = list(range(m)), []
    for _ in range(theta):
        k = max(1, len(left) - f - 2)
        scores = [sum(sorted(((x[i] - x[j]) ** 2).sum() for j in left if j != i)[:k]) for i in left]
        chosen.append(left.pop(int(np.argmin(scores))))
    s = x[chosen]
    med = np.median(s, axis=0)
    out = np.empty(x.shape[1])
    for c in range(x.shape[1]):
        order = np.argsort(np.abs(s[:, c] - med[c]), kind="stable")[:beta]
        out[c] = s[order, c].mean()
    return out


@pytest.mark.parametrize("m, f", [(7, 1), (11, 2), (12, 2)])
def test_bulyan_equals_reference(m, f):
    x = rows(m, 9, seed=5)
    got = Bulyan(f=f).apply(x, uniform(m)).value.double().numpy()
    np.testing.assert_allclose(got, bulyan_reference(x.double().numpy(), f), rtol=1e-6, atol=1e-7)


def test_bulyan_with_f_zero_is_the_uniform_mean():
    x = rows(6, 9, seed=6)
    out = Bulyan(f=0).apply(x, uniform(6))
    assert torch.allclose(out.value, x.double().mean(0).float(), rtol=0, atol=1e-7)
    assert out.selected.tolist() == list(range(6))


def test_bulyan_requires_m_at_least_4f_plus_3():
    with pytest.raises(ValueError, match=r"robust\.f=2 is not allowed: Bulyan needs M >= 4f \+ 3 .*M=10"):
        Bulyan(f=2).apply(rows(10, 3), uniform(10))
    x = clusters(11, 2)
    out = Bulyan(f=2).apply(x, uniform(11))
    assert out.selected.numel() == 7  # theta = M - 2f
    # the last Krum calls run on 2f + 1 rows, where Krum itself has no guarantee and the tight
    # attacker pair can be picked; the closest-to-median mean still removes it
    assert int((out.selected >= 9).sum()) <= 2
    assert float(out.value.abs().max()) < 0.05


# ---------------------------------------------------------------- centred clipping


def test_centered_clipping_with_infinite_tau_and_one_iteration_is_the_mean():
    x = rows(8, 10, seed=7)
    for centre in (None, {"centre": rows(1, 10, seed=8)[0]}):
        out = CenteredClipping(tau=math.inf, iters=1).apply(x, uniform(8), centre)
        assert torch.allclose(out.value, x.double().mean(0).float(), rtol=0, atol=1e-6)


def test_centered_clipping_moves_at_most_tau_per_iteration():
    x = 5.0 * rows(8, 10, seed=9)
    tau = 0.3
    state = {"centre": rows(1, 10, seed=10)[0]}
    for _ in range(4):
        out = CenteredClipping(tau=tau, iters=1).apply(x, uniform(8), state)
        assert (out.value - state["centre"]).double().norm() <= tau * (1 + 1e-6)
        state = out.state
    three = CenteredClipping(tau=tau, iters=3).apply(x, uniform(8), {"centre": rows(1, 10, seed=10)[0]})
    step = {"centre": rows(1, 10, seed=10)[0]}
    for _ in range(3):
        step = CenteredClipping(tau=tau, iters=1).apply(x, uniform(8), step).state
    assert torch.allclose(three.value, step["centre"], rtol=0, atol=1e-6)


def test_centered_clipping_clips_far_rows_to_exactly_tau():
    direction = torch.tensor([0.6, 0.8, 0.0])
    x = torch.stack([direction * r for r in (10.0, 20.0, 30.0)])
    out = CenteredClipping(tau=0.5, iters=1).apply(x, uniform(3), CenteredClipping().init_state(3))
    assert torch.allclose(out.value, 0.5 * direction, rtol=0, atol=1e-7)
    assert torch.equal(out.state["centre"], out.value)


def test_centered_clipping_validation():
    for key, kwargs in (("tau", {"tau": 0.0}), ("tau", {"tau": float("nan")}), ("iters", {"iters": 0})):
        with pytest.raises(ValueError, match=rf"robust\.{key}="):
            CenteredClipping(**kwargs)
    with pytest.raises(ValueError, match=r"state\['centre'\] must have shape \(4,\)"):
        CenteredClipping().apply(rows(3, 4), uniform(3), {"centre": torch.zeros(5)})


# ---------------------------------------------------------------- robustness on a synthetic problem

# 20 clients, P = 100; honest rows mu + N(0, 0.1^2) with mu ~ N(0, I) (||mu|| ~ 11); unequal weights
# from sample counts in [20, 200); 20 % of clients (attackers(20, 0.2, seed=0)) send -delta.
# Documented bounds (docs/robustness.md) on ||aggregate - honest weighted mean|| / ||honest mean||:
ROBUST_BOUNDS = {
    "median": ({}, 0.06),
    "trimmed_mean": ({"beta": 0.2}, 0.06),
    "krum": ({"f": 4}, 0.15),  # one honest row: its own noise, ~ sigma sqrt(P) / ||mu|| = 0.09
    "multi_krum": ({"f": 4}, 0.06),
    "bulyan": ({"f": 4}, 0.06),
    "centered_clipping": ({"tau": 1.0, "iters": 10}, 0.06),  # 3 rounds, centre carried
}
MEAN_AT_LEAST = 0.3  # the weighted mean moves by ~2 x the attackers' weight (0.20 here): ~0.41


def sign_flip_problem():
    m, p = 20, 100
    g = generator(0, "test_robust", "problem")
    mu = torch.randn(p, generator=g, dtype=torch.float64)
    honest = (mu + 0.1 * torch.randn(m, p, generator=g, dtype=torch.float64)).float()
    counts = torch.randint(20, 200, (m,), generator=g).double()
    weights = counts / counts.sum()
    bad = torch.zeros(m, dtype=torch.bool)
    bad[attackers(m, 0.2, seed=0)] = True
    sent = poison(honest, bad, SignFlip(), [None] * m)
    honest_w = weights * ~bad
    honest_mean = (honest_w / honest_w.sum()) @ honest.double()
    return sent, weights, honest_mean


def relative_error(value: torch.Tensor, honest_mean: torch.Tensor) -> float:
    return float((value.double() - honest_mean).norm() / honest_mean.norm())


def test_weighted_mean_is_pulled_far_off_by_sign_flipping():
    sent, weights, honest_mean = sign_flip_problem()
    assert relative_error(Mean().apply(sent, weights).value, honest_mean) > MEAN_AT_LEAST


@pytest.mark.parametrize("name", sorted(ROBUST_BOUNDS))
def test_robust_aggregators_stay_near_the_honest_mean(name):
    sent, weights, honest_mean = sign_flip_problem()
    params, bound = ROBUST_BOUNDS[name]
    agg = make_aggregator(name, **params)
    state = agg.init_state(sent.shape[1])
    for _ in range(3 if name == "centered_clipping" else 1):
        out = agg.apply(sent, weights, state)
        state = out.state
    assert relative_error(out.value, honest_mean) < bound


# ---------------------------------------------------------------- attacks


def test_sign_flip_and_scaling_are_exact():
    d = rows(3, 5, seed=11)
    assert torch.equal(SignFlip(scale=2.5).apply(d), -2.5 * d)
    assert torch.equal(SignFlip().apply(d[0]), -d[0])
    assert torch.equal(Scale(factor=-7.0).apply(d), -7.0 * d)
    for cls, kwargs in ((SignFlip, {"scale": 0.0}), (Scale, {"factor": math.inf}), (GaussianNoise, {"sigma": -1.0})):
        with pytest.raises(ValueError, match=rf"attack\.{next(iter(kwargs))}="):
            cls(**kwargs)


def test_gaussian_attack_is_deterministic_per_generator_and_leaves_the_global_rng_alone():
    d = rows(1, 1000, seed=12)[0]
    attack = GaussianNoise(sigma=3.0)
    before = torch.get_rng_state()
    a = attack.apply(d, generator(5, 1, 2, "attack"))
    b = attack.apply(d, generator(5, 1, 2, "attack"))
    c = attack.apply(d, generator(5, 1, 3, "attack"))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, 3.0 * torch.randn(1000, generator=generator(5, 1, 2, "attack")))
    assert abs(float(a.std()) - 3.0) < 0.3
    with pytest.raises(ValueError, match="needs the client's torch.Generator"):
        attack.apply(d)


def test_poison_replaces_only_malicious_rows_and_each_row_depends_on_itself_only():
    d = rows(5, 6, seed=13)
    bad = torch.tensor([False, True, False, True, False])
    gens = lambda: [generator(0, 0, i, "attack") for i in range(5)]  # noqa: E731
    out = poison(d, bad, GaussianNoise(), gens())
    assert torch.equal(out[~bad], d[~bad])
    assert torch.equal(out[3], GaussianNoise().apply(d[3], generator(0, 0, 3, "attack")))
    other = d.clone()
    other[0] += 1.0
    assert torch.equal(poison(other, bad, GaussianNoise(), gens())[1], out[1])
    assert torch.equal(poison(d, bad, SignFlip(), [None] * 5)[bad], -d[bad])
    with pytest.raises(ValueError, match="not an update attack"):
        poison(d, bad, LabelFlip(num_classes=10), gens())


def test_label_flipping_maps_y_to_c_minus_1_minus_y():
    y = torch.tensor([0, 1, 2, 9, 5], dtype=torch.int64)
    assert flip_labels(y, 10).tolist() == [9, 8, 7, 0, 4]
    assert torch.equal(LabelFlip(num_classes=10).apply_labels(flip_labels(y, 10)), y)
    assert flip_labels(torch.tensor([0, 2], dtype=torch.uint8), 3).tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        flip_labels(torch.tensor([3]), 3)
    with pytest.raises(ValueError, match="integer tensor"):
        flip_labels(torch.tensor([0.0]), 3)
    with pytest.raises(ValueError, match=r"attack\.num_classes=1"):
        LabelFlip(num_classes=1)


@pytest.mark.parametrize("n, fraction, count", [(10, 0.2, 2), (100, 0.29, 29), (7, 0.5, 3), (5, 0.0, 0), (4, 1.0, 4)])
def test_attackers_are_a_fixed_seeded_sorted_set(n, fraction, count):
    ids = attackers(n, fraction, seed=3)
    assert ids.dtype == torch.int64 and ids.numel() == count
    assert ids.tolist() == sorted(set(ids.tolist())) and all(0 <= i < n for i in ids.tolist())
    assert torch.equal(ids, attackers(n, fraction, seed=3))
    expected = torch.randperm(n, generator=generator(3, "attackers"))[:count].sort().values
    assert torch.equal(ids, expected)  # only (seed, "attackers") enters: no round, no sampling


def test_attackers_depend_on_the_seed_and_validate():
    assert not torch.equal(attackers(100, 0.2, seed=0), attackers(100, 0.2, seed=1))
    with pytest.raises(ValueError, match=r"attack\.fraction=1\.5 is not allowed"):
        attackers(10, 1.5, seed=0)
    with pytest.raises(ValueError, match=r"attack\.num_clients=0"):
        attackers(0, 0.1, seed=0)


# ---------------------------------------------------------------- registry, inputs, determinism


def test_registries_build_validated_objects():
    assert set(AGGREGATORS) == {"mean", "krum", "multi_krum", "median", "trimmed_mean", "bulyan", "centered_clipping"}
    assert set(ATTACKS) == {"sign_flip", "scale", "gaussian", "label_flip"}
    assert make_attack("label_flip", num_classes=3).apply_labels(torch.tensor([0])).tolist() == [2]
    with pytest.raises(ValueError, match=r"robust\.aggregator='geomed' is not allowed: use one of bulyan"):
        make_aggregator("geomed")
    with pytest.raises(ValueError, match=r"robust\.beta is not a parameter of 'krum': allowed f"):
        make_aggregator("krum", beta=0.1)
    with pytest.raises(ValueError, match=r"attack\.name='flip' is not allowed"):
        make_attack("flip")


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_aggregators_are_deterministic_pure_and_check_their_input(name):
    x, w = rows(11, 7, seed=14), uniform(11)
    agg = AGGREGATORS[name]()
    x0 = x.clone()
    a, b = agg.apply(x, w, agg.init_state(7)), agg.apply(x, w, agg.init_state(7))
    assert torch.equal(a.value, b.value) and torch.equal(x, x0)
    assert a.value.shape == (7,) and a.value.dtype == torch.float32
    bad = x.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        agg.apply(bad, w)
    with pytest.raises(ValueError, match=r"weights must have shape \(11,\)"):
        agg.apply(x, uniform(10))


def test_mean_uses_the_weights():
    x = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    w = torch.tensor([0.25, 0.75], dtype=torch.float64)
    assert Mean().apply(x, w).value.tolist() == [2.5, 3.0]
