"""Every hyper-parameter range of every registered algorithm and server optimiser, pinned.

Written to kill the mutation-testing survivors of ``Hparams.__post_init__``, the server
optimisers' ``__post_init__`` and ``check_staleness_hparams`` (docs/testing.md): for each
key, the edge values of its allowed range (and one inside) are accepted, the values just
outside are refused, and the refusal is exactly
``<section>.<key>=<value!r> is not allowed: <rule>`` (fedtorch.algorithms.hparams.check).
The rules below are the documented ranges (docstrings, docs/algorithms.md), written out
by hand, not read from the classes.
"""

from __future__ import annotations

import dataclasses

import pytest

from fedtorch.algorithms import server_optimizers as so
from fedtorch.algorithms.registry import builtin_algorithms, get_algorithm

STALENESS_RULE = "use one of constant, hinge, polynomial"

# (algorithm, key, accepted values, refused values, rule in the message)
ALGORITHM_RANGES = [
    ("deltasgd", "gamma", [1e-9, 0.5, 2.0], [0, -1.0], "must be > 0"),
    ("deltasgd", "eta0", [1e-9, 0.5, 3.0], [0, -0.1], "must be > 0"),
    ("deltasgd", "theta0", [0, 0.5, 2.0], [-1e-9, -1], "must be >= 0"),
    ("deltasgd", "amplifier", [0, 0.02, 1.0, 3.0], [-0.5],
     "must be >= 0 (1 = the paper's rule, 0.02 = the authors' code)"),
    ("deltasgd", "eps", [0, 0.5, 2.0], [-1e-3], "must be >= 0"),
    ("dualprox", "mu", [0, 0.5, 2.0], [-0.1], "must be >= 0"),
    ("dualprox", "lam", [0, 0.5, 2.0], [-0.1], "must be >= 0"),
    ("fedasync", "alpha", [1e-9, 0.5, 1], [0, -0.1, 1.5, 2], "must be in (0, 1]"),
    ("fedasync", "rho", [0, 0.5, 2.0], [-0.1], "must be >= 0"),
    ("fedasync", "staleness", ["constant", "hinge", "polynomial"], ["cubic", "Hinge"], STALENESS_RULE),
    ("fedasync", "staleness_a", [0, 0.5, 10.0], [-0.5], "must be >= 0"),
    ("fedasync", "staleness_b", [0, 0.5, 4.0], [-1.0], "must be >= 0"),
    ("fedbuff", "buffer_size", [1, 2, 10], [0, -1], "must be >= 1"),
    ("fedbuff", "staleness", ["constant", "hinge", "polynomial"], ["cubic"], STALENESS_RULE),
    ("fedbuff", "staleness_a", [0, 0.5, 2.0], [-0.5], "must be >= 0"),
    ("fedbuff", "staleness_b", [0, 0.5, 4.0], [-1.0], "must be >= 0"),
    ("fedcm", "alpha", [1e-9, 0.5, 1], [0, -0.1, 1.5, 2], "must be in (0, 1]"),
    ("feddyn", "alpha", [1e-9, 0.5, 2.0], [0, -0.1], "must be > 0"),
    ("fedexp", "eps", [0, 0.5, 2.0], [-1e-3], "must be >= 0"),
    ("fedgm", "beta", [0, 0.5, 0.999], [-0.1, 1, 1.5], "must be in [0, 1)"),
    ("fedgm", "nu", [0, 0.5, 1], [-0.1, 1.5, 2], "must be in [0, 1]"),
    ("fedinit", "beta", [0, 0.5, 2.0], [-0.1], "must be >= 0"),
    ("fedinit", "delta_from", ["start", "global"], ["end", "START"], "use start or global"),
    ("fedlesam", "rho", [0, 0.5, 2.0], [-0.1], "must be >= 0"),
    ("fednar", "weight_decay", [0, 0.5, 2.0], [-0.1], "must be >= 0"),
    ("fednar", "clip", [1e-9, 0.5, 2.0, float("inf")], [0, -1.0], "must be > 0 (.inf for no clipping)"),
    ("fednar", "decay", [1e-9, 0.5, 1], [0, -0.1, 1.5, 2], "must be in (0, 1]"),
    ("fedprox", "mu", [0, 0.5, 2.0], [-0.1], "must be >= 0"),
    ("fedsam", "rho", [0, 0.5, 2.0], [-0.1], "must be >= 0"),
    ("perfedavg", "alpha", [1e-9, 0.5, 2.0], [0, -0.1], "must be > 0"),
    ("perfedavg", "variant", ["fo", "hf"], ["FO", "maml"], "use fo or hf"),
    ("perfedavg", "delta", [1e-9, 0.5, 2.0], [0, -0.1], "must be > 0"),
    ("perfedavg", "personal_steps", [1, 2, 5], [0, -1], "must be >= 1"),
    ("qffl", "q", [0, 0.5, 2.0], [-0.1], "must be >= 0"),
    ("scaffnew", "p", [None, 1e-9, 0.5, 1, 1.0], [0, -0.5, 1.5, 2, "0.5"],
     "must be null (1 / mean local steps) or a number in (0, 1]"),
]

# (optimiser, key, accepted, refused, rule); section "server"
SERVER_RANGES = [
    *[(name, "lr", [1e-9, 0.5, 2.0], [0, -1.0], "must be > 0") for name in ("sgd", "adagrad", "adam", "yogi")],
    ("sgd", "momentum", [0, 0.5, 0.999], [-0.1, 1, 1.5], "must be in [0, 1)"),
    *[(name, "tau", [1e-9, 0.5, 2.0], [0, -1e-3], "must be > 0") for name in ("adagrad", "adam", "yogi")],
    *[(name, "beta1", [0, 0.5, 0.999], [-0.1, 1, 1.5], "must be in [0, 1)") for name in ("adagrad", "adam", "yogi")],
    *[(name, "beta2", [0, 0.5, 0.999], [-0.1, 1, 1.5], "must be in [0, 1)") for name in ("adam", "yogi")],
]


def _ids(table):
    return [f"{name}.{key}" for name, key, *_ in table]


def test_the_tables_cover_every_key():
    """A new key (or algorithm) without a row here makes this fail: add its range above
    (switches, True / False, have no range)."""
    want = {(n, f.name) for n in builtin_algorithms()
            for f in dataclasses.fields(get_algorithm(n).Hparams) if not isinstance(f.default, bool)}
    assert want == {(n, k) for n, k, *_ in ALGORITHM_RANGES}
    want = {(n, f.name) for n, cls in so.SERVER_OPTIMIZERS.items() for f in dataclasses.fields(cls)}
    assert want == {(n, k) for n, k, *_ in SERVER_RANGES}


@pytest.mark.parametrize(("name", "key", "accepted", "refused", "rule"), ALGORITHM_RANGES, ids=_ids(ALGORITHM_RANGES))
def test_algorithm_range_edges_and_message(name, key, accepted, refused, rule):
    hparams = get_algorithm(name).Hparams
    for value in accepted:
        assert getattr(hparams(**{key: value}), key) == value
    for value in refused:
        with pytest.raises(ValueError) as err:
            hparams(**{key: value})
        assert str(err.value) == f"algorithm.{key}={value!r} is not allowed: {rule}"


@pytest.mark.parametrize(("name", "key", "accepted", "refused", "rule"), SERVER_RANGES, ids=_ids(SERVER_RANGES))
def test_server_optimizer_range_edges_and_message(name, key, accepted, refused, rule):
    for value in accepted:
        assert getattr(so.make_server_optimizer(name, **{key: value}), key) == value
    for value in refused:
        with pytest.raises(ValueError) as err:
            so.make_server_optimizer(name, **{key: value})
        assert str(err.value) == f"server.{key}={value!r} is not allowed: {rule}"


def test_staleness_hparams_refuse_unknown_name_before_checking_a_and_b():
    from fedtorch.algorithms.staleness import check_staleness_hparams

    check_staleness_hparams("hinge", 0, 0)
    with pytest.raises(ValueError) as err:
        check_staleness_hparams("cubic", -1, -1)
    assert str(err.value) == f"algorithm.staleness='cubic' is not allowed: {STALENESS_RULE}"
    with pytest.raises(ValueError) as err:
        check_staleness_hparams("constant", 0, -2)
    assert str(err.value) == "algorithm.staleness_b=-2 is not allowed: must be >= 0"


def test_scaffnew_default_p_is_one_over_the_mean_and_refused_below_one_or_unknown():
    from fedtorch.algorithms import LocalSGD
    from fedtorch.protocol import FederationInfo

    cls = get_algorithm("scaffnew")
    assert cls(None, LocalSGD(), None, FederationInfo(4, 0.1, mean_local_steps=1)).p == 1.0
    assert cls(None, LocalSGD(), None, FederationInfo(4, 0.1, mean_local_steps=2.5)).p == 0.4
    assert cls(cls.Hparams(p=0.5), LocalSGD(), None, FederationInfo(4, 0.1, mean_local_steps=0.5)).p == 0.5
    assert cls(cls.Hparams(p=1), LocalSGD(), None, FederationInfo(4, 0.1)).p == 1.0
    with pytest.raises(ValueError) as err:
        cls(None, LocalSGD(), None, FederationInfo(4, 0.1, mean_local_steps=0.5))
    assert str(err.value) == ("algorithm.p=None is not allowed: defaults to 1 / mean local steps, "
                              "but the mean is 0.5 (< 1)")
    with pytest.raises(ValueError) as err:
        cls(None, LocalSGD(), None, FederationInfo(4, 0.1))
    assert str(err.value) == (
        "scaffnew: algorithm.p is unset and FederationInfo.mean_local_steps is unknown; set algorithm.p in (0, 1] "
        "(one communication probability shared by every client) or pass FederationInfo(mean_local_steps=...)")
    with pytest.raises(ValueError, match="mean_local_steps"):
        cls()


def test_scaffnew_keeps_its_server_optimizer_and_federation_and_needs_none_with_explicit_p():
    from fedtorch.algorithms import LocalSGD
    from fedtorch.algorithms.server_optimizers import make_server_optimizer
    from fedtorch.protocol import FederationInfo

    cls = get_algorithm("scaffnew")
    opt, fed = make_server_optimizer("sgd", lr=0.5), FederationInfo(4, 0.1, mean_local_steps=2)
    algo = cls(cls.Hparams(p=0.5), LocalSGD(), opt, fed)
    assert algo.server_optimizer is opt and algo.federation is fed and algo.p == 0.5
    assert cls(cls.Hparams(p=0.25)).p == 0.25  # no FederationInfo needed when p is given
