"""Property tests of every partitioner: cover, sizes, classes per client, skew, minimum
sizes, determinism, and clear errors for impossible requests."""

import numpy as np
import pytest
import torch

from fedtorch.data import PARTITIONERS, PartitionError, TensorDataset, split_dataset
from fedtorch.data.partition import (
    add_client_noise, client_inner_dirichlet, dirichlet, fcube_split, iid, iid_lognormal, label_quantity, natural,
    power_law, quantity_dirichlet, shards,
)
from fedtorch.data.partition.common import apportion
from fedtorch.data.stats import js_distance, label_counts, summarize
from fedtorch.data.synthetic import fcube

RNG = np.random.default_rng(0)
TARGETS = RNG.integers(0, 10, size=5000)
SKEWED = np.repeat(np.arange(10), [900, 800, 700, 600, 500, 500, 400, 300, 200, 100])  # unequal classes
CUBE = fcube(0, num_train=2000)
USERS = tuple(np.arange(s, s + n) for s, n in ((0, 5), (5, 40), (45, 1), (46, 300), (346, 54)))


def sizes(parts):
    return np.array([len(p) for p in parts])


def classes_per_client(targets, parts):
    return np.array([len(np.unique(targets[p])) for p in parts])


def mean_js(targets, parts):
    return summarize(label_counts(targets, parts, int(targets.max()) + 1)).mean_js


def assert_exact_cover(parts, n):
    allidx = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))


# Every registered partitioner, called through split_dataset as `fedtorch run` calls it.
CASES = {
    "iid": (TARGETS, 37, {}),
    "iid-lognormal": (TARGETS, 40, {"size_sigma": 1.0, "min_samples": 20}),
    "quantity-dir": (TARGETS, 40, {"beta": 0.3, "min_samples": 20}),
    "dirichlet": (TARGETS, 40, {"alpha": 0.3, "min_samples": 20}),
    "client-inner-dir": (SKEWED, 40, {"alpha": 0.3, "size_sigma": 0.5, "min_samples": 20}),
    "shards": (TARGETS, 40, {"shards_per_client": 3}),
    "label-quantity": (SKEWED, 30, {"classes_per_client": 3}),
    "powerlaw": (SKEWED, 50, {"classes_per_client": 2, "size_sigma": 2.0, "min_samples": 20}),
    "noise": (TARGETS, 20, {"noise_sigma": 0.5}),
    "fcube": (CUBE.train_y.numpy(), 8, {}),
    "natural": (np.zeros(400, dtype=np.int64), 5, {}),
}


def run_case(name, seed):
    targets, num_clients, options = CASES[name]
    if name == "fcube":
        ds = CUBE
    else:
        x = torch.randn(len(targets), 3)
        ds = TensorDataset(x, torch.from_numpy(targets), x[:5], torch.zeros(5, dtype=torch.int64), 10, "t", USERS)
    return split_dataset(ds, name, num_clients, seed, options)


def test_every_registered_partitioner_is_tested():
    assert set(CASES) == set(PARTITIONERS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_sample_once_sorted_and_deterministic_per_seed(name):
    (_, a), (_, b), (_, c) = run_case(name, 1), run_case(name, 1), run_case(name, 2)
    targets, num_clients, _ = CASES[name]
    assert len(a) == num_clients and all(len(p) > 0 for p in a)
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in a)
    assert_exact_cover(a, len(targets))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    if name != "natural":  # all users taken: the seed has nothing to choose
        assert any(not np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("name", ["dirichlet", "client-inner-dir", "quantity-dir", "iid-lognormal", "powerlaw"])
def test_min_samples_honoured(name):
    targets, num_clients, options = CASES[name]
    for seed in range(3):
        _, parts = run_case(name, seed)
        assert sizes(parts).min() >= options["min_samples"]


def test_iid_balanced_and_label_distribution_close_to_global():
    parts = iid(TARGETS, 37, 0)
    assert sizes(parts).max() - sizes(parts).min() <= 1
    # only sampling noise (~135 samples per client), far below a Dirichlet(1) split's skew
    assert mean_js(TARGETS, parts) < 0.15 < 0.3 < mean_js(TARGETS, dirichlet(TARGETS, 37, 0, alpha=1.0))


def test_lognormal_sizes_sum_grow_in_spread_with_sigma_and_sigma0_is_balanced():
    stds = [sizes(iid_lognormal(TARGETS, 50, 0, size_sigma=s, min_samples=5)).std() for s in (0.0, 0.5, 1.5)]
    assert stds[0] < 1 and stds[0] < stds[1] < stds[2]


def test_quantity_skew_grows_as_beta_shrinks_and_tiny_beta_terminates():
    stds = [sizes(quantity_dirichlet(TARGETS, 50, 0, beta=b, min_samples=10)).std() for b in (100, 1, 0.1)]
    assert stds[0] < stds[1] < stds[2]
    # NIID-Bench redraws q until every client has min_samples, which at beta = 1e-3 never
    # happens; here each client gets 40 first and q, nearly a vertex of the simplex, gives
    # almost all of the 1000 left to one client (every share underflows at 1e-300: all to one)
    for beta, top in ((1e-3, 800), (1e-300, 1000)):
        parts = quantity_dirichlet(TARGETS, 100, 0, beta=beta, min_samples=40)
        assert_exact_cover(parts, len(TARGETS))
        n = np.sort(sizes(parts))
        assert n[0] == 40 and n[-1] >= 40 + top and n[-2] <= 40 + (1000 - top) // 2, beta


@pytest.mark.parametrize("split", [dirichlet, client_inner_dirichlet])
def test_label_skew_grows_as_alpha_shrinks(split):
    js = [mean_js(TARGETS, split(TARGETS, 50, 0, alpha=a, min_samples=10)) for a in (100, 1, 0.1)]
    assert js[0] < js[1] < js[2], js
    assert js[0] < 0.15 and js[2] > 0.5


def test_client_inner_dirichlet_fixed_sizes_independent_of_alpha():
    balanced = [sizes(client_inner_dirichlet(SKEWED, 40, 0, alpha=a)) for a in (0.05, 100)]
    assert all(s.max() - s.min() <= 1 for s in balanced)
    unbalanced = [sizes(client_inner_dirichlet(SKEWED, 40, 0, alpha=a, size_sigma=1.0, min_samples=5)) for a in (0.05, 100)]
    np.testing.assert_array_equal(unbalanced[0], unbalanced[1])
    np.testing.assert_array_equal(unbalanced[0], sizes(iid_lognormal(SKEWED, 40, 0, size_sigma=1.0, min_samples=5)))


def test_label_quantity_gives_exactly_k_classes():
    for k in (1, 2, 5, 10):
        parts = label_quantity(SKEWED, 30, 0, classes_per_client=k)
        assert set(classes_per_client(SKEWED, parts)) == {k}
        assert_exact_cover(parts, len(SKEWED))


def test_label_quantity_with_fewer_clients_than_classes_leaves_unheld_classes_out():
    parts = label_quantity(TARGETS, 3, 0, classes_per_client=2)
    held = np.unique(TARGETS[np.concatenate(parts)])
    assert set(classes_per_client(TARGETS, parts)) == {2} and len(held) <= 6
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.flatnonzero(np.isin(TARGETS, held)))


def test_power_law_k_consecutive_classes_and_heavy_tail():
    parts = power_law(TARGETS, 100, 0, classes_per_client=2, size_sigma=2.0, min_samples=10)
    for u, p in enumerate(parts):
        assert set(np.unique(TARGETS[p])) == {u % 10, (u + 1) % 10}
    s = sizes(parts)
    assert s.min() >= 10 and s.max() > 5 * np.median(s)  # heavy-tailed sizes
    flat = power_law(TARGETS, 100, 0, classes_per_client=2, size_sigma=0.0, min_samples=10)
    assert sizes(flat).std() < 0.2 * s.std()


def test_shards_give_few_classes():
    parts = shards(np.sort(TARGETS), 100, 0, shards_per_client=2)
    assert classes_per_client(np.sort(TARGETS), parts).max() <= 4
    assert sizes(parts).max() - sizes(parts).min() <= 2


def test_noise_grows_with_client_index_and_leaves_test_set_clean():
    x = torch.zeros(4000, 1, 8, 8)
    ds = TensorDataset(x, torch.from_numpy(TARGETS[:4000]), x[:10], torch.zeros(10, dtype=torch.int64), 10, "zeros")
    noisy, parts = split_dataset(ds, "noise", 5, 0, {"noise_sigma": 0.8})
    stds = [float(noisy.train_x[torch.from_numpy(p)].std()) for p in parts]
    np.testing.assert_allclose(stds, [0.0, 0.2, 0.4, 0.6, 0.8], atol=0.02)
    assert torch.equal(noisy.test_x, ds.test_x) and torch.equal(ds.train_x, x)  # input not modified
    again, _ = split_dataset(ds, "noise", 5, 0, {"noise_sigma": 0.8})
    assert torch.equal(again.train_x, noisy.train_x)


def test_fcube_clients_see_one_octant_pair_with_both_labels():
    x, y = CUBE.train_x.numpy(), CUBE.train_y.numpy()
    np.testing.assert_array_equal(y, (x[:, 0] < 0).astype(np.int64))
    parts = fcube_split(y, 8, 0, inputs=x)
    for p in parts:
        signs = np.sign(x[p]) * np.sign(x[p, :1])  # octant relative to the sign of x1
        assert len(np.unique(signs, axis=0)) == 1  # one octant pair
        assert set(y[p]) == {0, 1}


def test_natural_keeps_users_and_samples_a_subset():
    np.testing.assert_array_equal(np.concatenate(natural(None, 5, 0, users=USERS)), np.arange(400))
    a, b = natural(None, 3, 7, users=USERS), natural(None, 3, 7, users=USERS)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(any(np.array_equal(p, u) for u in USERS) for p in a)


def test_apportion_sums_exactly_and_rounds_each_share():
    w = np.random.default_rng(1).lognormal(0, 2, 17)
    out = apportion(1001, w)
    assert out.sum() == 1001 and np.all(np.abs(out - 1001 * w / w.sum()) < 1)


def test_js_distance_bounds():
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    # hand computation for [0.5, 0.5] vs [0, 1]: m = [0.25, 0.75]
    half = 0.5 * (0.5 * np.log2(0.5 / 0.25) + 0.5 * np.log2(0.5 / 0.75)) + 0.5 * np.log2(1 / 0.75)
    np.testing.assert_allclose(js_distance(p, np.array([0.0, 1.0])), [1.0, np.sqrt(half)])
    assert js_distance(np.array([0.3, 0.7]), np.array([0.3, 0.7])) == 0.0
    assert js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: label_quantity(TARGETS, 10, 0, classes_per_client=11), "classes_per_client=11 is not possible: the data has 10 classes"),
        (lambda: power_law(TARGETS, 10, 0, classes_per_client=0), "classes_per_client=0 is not possible"),
        (lambda: label_quantity(SKEWED, 1000, 0, classes_per_client=10), "class 0 has 900 samples for 1000 clients"),
        (lambda: power_law(SKEWED, 500, 0, min_samples=10), "class 6 has 400 samples, fewer than 5 for each of its 100 clients"),
        (lambda: quantity_dirichlet(TARGETS, 100, 0, beta=0.5, min_samples=51), "at least 51 samples"),
        (lambda: quantity_dirichlet(TARGETS, 10, 0, beta=0.0), "data.beta=0.0 is not allowed: Dirichlet beta must be > 0"),
        (lambda: client_inner_dirichlet(TARGETS, 100, 0, alpha=0.5, min_samples=51), "at least 51 samples"),
        (lambda: client_inner_dirichlet(TARGETS, 10, 0, alpha=-1.0), "data.alpha=-1.0 is not allowed: Dirichlet alpha must be > 0"),
        (lambda: iid_lognormal(TARGETS, 10, 0, size_sigma=-1.0), "data.size_sigma=-1.0 is not allowed: must be >= 0"),
        (lambda: fcube_split(TARGETS, 6, 0, inputs=CUBE.train_x.numpy()), "multiple of 4"),
        (lambda: fcube_split(TARGETS, 4, 0, inputs=np.zeros((len(TARGETS), 1, 2, 2))), "needs 3-D points"),
        (lambda: natural(TARGETS, 5, 0, users=None), "needs a dataset with its own users"),
        (lambda: natural(TARGETS, 6, 0, users=USERS), "data.num_clients=6 but the dataset has 5 users"),
        (lambda: add_client_noise(torch.zeros(4, 2), [np.arange(4)], 0, -0.1), "data.noise_sigma=-0.1 is not allowed: must be >= 0"),
        (lambda: add_client_noise(torch.zeros(4, 2, dtype=torch.int64), [np.arange(4)], 0, 0.1), "needs float inputs"),
        (lambda: split_dataset(TensorDataset(torch.zeros(50, 1), torch.zeros(50, dtype=torch.int64), torch.zeros(1, 1),
                                             torch.zeros(1, dtype=torch.int64), 1, "t"),
                               "iid-lognormal", 20, 0, {"size_sigma": 5.0, "min_samples": 0}), "without samples"),
        (lambda: split_dataset(CUBE, "nope", 4, 0), "unknown partitioner 'nope'; available: client-inner-dir"),
    ],
)
def test_impossible_requests_raise_a_clear_error(call, match):
    with pytest.raises((PartitionError, KeyError), match=match):
        call()


def test_options_set_to_none_take_each_partitioners_default():
    ds = TensorDataset(torch.zeros(len(TARGETS), 1), torch.from_numpy(TARGETS), torch.zeros(1, 1),
                       torch.zeros(1, dtype=torch.int64), 10, "t")
    options = {"size_sigma": None, "min_samples": 10, "classes_per_client": 2, "alpha": 0.5}
    for name, direct in (("powerlaw", power_law(TARGETS, 40, 3, size_sigma=2.0)),
                         ("iid-lognormal", iid_lognormal(TARGETS, 40, 3, size_sigma=0.3, min_samples=10)),
                         ("client-inner-dir", client_inner_dirichlet(TARGETS, 40, 3, alpha=0.5, size_sigma=0.0, min_samples=10))):
        _, parts = split_dataset(ds, name, 40, 3, options)
        assert all(np.array_equal(a, b) for a, b in zip(parts, direct)), name
