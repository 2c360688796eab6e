"""The registry, make_server_optimizer, the server optimisers' steps and the staleness
functions, pinned exactly.

Written to kill mutation-testing survivors (docs/testing.md). The optimiser steps are
checked against Reddi et al. 2021, Algorithm 2 computed by hand in plain Python floats
on one coordinate.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from fedtorch.algorithms import registry
from fedtorch.algorithms.base import FedAlgorithm
from fedtorch.algorithms.fedprox import FedProx, FedProxHparams
from fedtorch.algorithms.qffl import QFFL
from fedtorch.algorithms.scaffnew import Scaffnew
from fedtorch.algorithms.server_optimizers import (ServerAdagrad, ServerAdam, ServerSGD, ServerYogi,
                                                   make_server_optimizer, server_optimizer_keys)
from fedtorch.algorithms.staleness import constant, hinge, polynomial, staleness_weight
from fedtorch.protocol import ClientMessage


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry's tables, restored after the test."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))


def test_aliases_and_case_resolve_to_the_class():
    assert registry.get_algorithm("q-ffl") is QFFL and registry.get_algorithm("Q-FedAvg") is QFFL
    assert registry.get_algorithm("proxskip") is Scaffnew and registry.get_algorithm("SCAFFNEW") is Scaffnew
    assert registry.get_algorithm("FedPROX") is FedProx
    assert "proxskip" not in registry.available_algorithms() and "scaffnew" in registry.available_algorithms()


def test_unknown_algorithm_lists_the_registered_names():
    with pytest.raises(KeyError) as err:
        registry.get_algorithm("nope")
    assert err.value.args[0] == f"unknown algorithm 'nope'; available: {', '.join(registry.available_algorithms())}"
    assert registry.available_algorithms() == sorted(registry.available_algorithms())
    assert {"fedavg", "scaffold", "deltasgd"} <= set(registry.available_algorithms())


def test_register_a_new_class_with_mixed_case_name_and_aliases(scratch_registry):
    class Toy(FedAlgorithm):
        name = "ToyAlgo"
        aliases = ("Toy-Alias", "toyalgo")

    assert registry.register(Toy) is Toy
    assert registry.get_algorithm("toyalgo") is Toy and registry.get_algorithm("TOYALGO") is Toy
    assert registry.get_algorithm("toy-alias") is Toy and registry.get_algorithm("TOY-ALIAS") is Toy
    assert "toyalgo" in registry.available_algorithms() and "toy-alias" not in registry.available_algorithms()
    assert "toyalgo" not in registry._ALIASES  # an alias equal to the name is not an alias


@pytest.mark.parametrize(("name", "aliases", "taken", "owner"), [
    ("FedAvg", (), "fedavg", "fedavg"),  # another class's name
    ("fresh", ("Q-FFL",), "q-ffl", "qffl"),  # another class's alias
    ("fresh", ("ProxSkip",), "proxskip", "scaffnew"),
    ("fresh", ("SCAFFOLD",), "scaffold", "scaffold"),  # an alias that is another class's name
])
def test_register_refuses_a_name_or_alias_taken_by_another_class(scratch_registry, name, aliases, taken, owner):
    Clash = type("Clash", (FedAlgorithm,), {"name": name, "aliases": aliases})
    with pytest.raises(ValueError) as err:
        registry.register(Clash)
    assert str(err.value) == f"algorithm name {taken!r} of Clash is already taken by {owner!r}"
    assert registry.get_algorithm(owner).__name__ != "Clash"


def test_register_accepts_the_same_definition_again(scratch_registry):
    """A module reload defines the class again (same module and qualified name)."""
    again = type("FedProx", (FedAlgorithm,), {"name": "fedprox", "__module__": FedProx.__module__,
                                               "__qualname__": FedProx.__qualname__})
    assert registry.register(again) is again
    assert registry.get_algorithm("fedprox") is again
    module = importlib.import_module("fedtorch.algorithms.qffl")
    copy = type("QFFL", (FedAlgorithm,), {"name": "qffl", "aliases": QFFL.aliases, "__module__": module.__name__,
                                           "__qualname__": "QFFL"})
    assert registry.register(copy) is copy and registry.get_algorithm("q-ffl") is copy


def test_an_algorithm_built_without_arguments_takes_its_defaults():
    algo = FedProx()
    assert algo.hp == FedProxHparams() and algo.local.momentum == 0 and algo.federation is None
    assert isinstance(algo.server_optimizer, ServerSGD) and algo.server_optimizer.lr == 1.0
    x0 = torch.tensor([1.0, 2.0])
    msgs = ClientMessage.stack([ClientMessage(delta=torch.tensor([0.5, -1.0]), num_samples=1, num_steps=1, loss=0.0)])
    server = algo.aggregate(algo.init_server(x0), msgs, torch.ones(1))
    assert server.x.tolist() == [0.5, 3.0] and server.round == 1


def test_an_algorithm_that_needs_the_federation_says_so():
    from fedtorch.algorithms.scaffold import Scaffold

    with pytest.raises(ValueError) as err:
        Scaffold()
    assert str(err.value) == "algorithm 'scaffold' needs federation=FederationInfo(num_clients, lr)"


# ---- make_server_optimizer -------------------------------------------------------------

def test_make_server_optimizer_defaults_and_errors():
    assert make_server_optimizer() == ServerSGD(lr=1.0, momentum=0.0)
    assert make_server_optimizer("ADAM", lr=0.5) == ServerAdam(lr=0.5)
    assert type(make_server_optimizer("yogi")) is ServerYogi and type(make_server_optimizer("adagrad")) is ServerAdagrad
    with pytest.raises(KeyError) as err:
        make_server_optimizer("lamb")
    assert err.value.args[0] == "unknown server optimizer 'lamb'; known: adagrad, adam, sgd, yogi"
    with pytest.raises(ValueError) as err:
        make_server_optimizer("adam", momentum=0.9)
    assert str(err.value) == "server.optimizer='adam' does not use server.momentum; it takes lr, beta1, beta2, tau"
    with pytest.raises(ValueError) as err:
        make_server_optimizer("Adagrad", zeta=1, beta2=0.9)
    assert str(err.value) == "server.optimizer='Adagrad' does not use server.beta2, server.zeta; it takes lr, beta1, tau"
    assert server_optimizer_keys("sgd") == ["lr", "momentum"]
    assert server_optimizer_keys("yogi") == ["lr", "beta1", "beta2", "tau"]


# ---- server optimiser steps ------------------------------------------------------------

def test_server_sgd_without_momentum_keeps_no_buffer():
    x = torch.tensor([1.0, 2.0])
    assert ServerSGD(momentum=0).init(x) == {}
    assert ServerSGD(momentum=0.5).init(x)["momentum"].tolist() == [0.0, 0.0]
    new, state = ServerSGD(lr=0.5).step(x, torch.tensor([1.0, -2.0]), {})
    assert new.tolist() == [0.5, 3.0] and state == {}


def _adaptive_reference(kind, x, deltas, lr, beta1, beta2, tau):
    """Reddi et al. 2021, Alg. 2 on one coordinate (Delta uphill: the paper's Delta_t is -Delta)."""
    m, v = 0.0, tau * tau
    for d in deltas:
        m = beta1 * m + (1 - beta1) * (-d)
        if kind == "adagrad":
            v = v + d * d
        elif kind == "adam":
            v = beta2 * v + (1 - beta2) * d * d
        else:
            s = (v > d * d) - (v < d * d)
            v = v - (1 - beta2) * d * d * s
        x = x + lr * m / (math.sqrt(v) + tau)
    return x, m, v


@pytest.mark.parametrize("kind", ["adagrad", "adam", "yogi"])
def test_adaptive_server_steps_follow_reddi_algorithm_2(kind):
    lr, beta1, beta2, tau = 0.1, 0.8, 0.95, 0.05
    hp = dict(lr=lr, beta1=beta1, tau=tau) | ({} if kind == "adagrad" else dict(beta2=beta2))
    opt = make_server_optimizer(kind, **hp)
    x0, deltas = [1.0, -2.0], [[0.5, 0.2], [-0.3, 0.05], [0.1, 0.4]]
    x = torch.tensor(x0, dtype=torch.float64)
    state = opt.init(x)
    assert state["m"].tolist() == [0.0, 0.0] and state["v"].tolist() == pytest.approx([tau * tau] * 2, rel=1e-12)
    for d in deltas:
        x, state = opt.step(x, torch.tensor(d, dtype=torch.float64), state)
    for j in range(2):
        want_x, want_m, want_v = _adaptive_reference(kind, x0[j], [d[j] for d in deltas], lr, beta1, beta2, tau)
        assert x[j].item() == pytest.approx(want_x, rel=1e-12)
        assert state["m"][j].item() == pytest.approx(want_m, rel=1e-12, abs=1e-15)
        assert state["v"][j].item() == pytest.approx(want_v, rel=1e-12)


def test_yogi_leaves_v_unchanged_where_it_equals_delta_squared():
    """sign(v - Delta^2) = 0: tau = 0.5 gives v^0 = 0.25, Delta = 0.5."""
    opt = ServerYogi(lr=1.0, beta1=0.0, beta2=0.5, tau=0.5)
    x = torch.tensor([0.0], dtype=torch.float64)
    new, state = opt.step(x, torch.tensor([0.5], dtype=torch.float64), opt.init(x))
    assert state["v"].item() == 0.25
    assert new.item() == pytest.approx(-0.5 / (0.5 + 0.5), rel=1e-12)


# ---- staleness -------------------------------------------------------------------------

def test_staleness_functions_and_errors():
    assert hinge(2, 10, 4) == 1.0 and hinge(4, 10, 4) == 1.0 and hinge(5, 10, 4) == pytest.approx(1 / 11)
    assert polynomial(3, 0.5) == 0.5 and polynomial(0, 2.0) == 1.0 and constant(7) == 1.0
    assert staleness_weight("hinge", 6, 0.5, 2) == pytest.approx(1 / 3)
    assert staleness_weight("polynomial", 8, 0.5, 0) == pytest.approx(1 / 3)
    with pytest.raises(ValueError) as err:
        staleness_weight("cubic", 1, 0, 0)
    assert str(err.value) == "unknown staleness function 'cubic'; known: constant, hinge, polynomial"
    with pytest.raises(ValueError) as err:
        staleness_weight("constant", -1, 0, 0)
    assert str(err.value) == "staleness must be >= 0, got -1"


def test_register_a_class_without_aliases(scratch_registry):
    """``aliases`` is optional: a class without the attribute registers under its name."""
    Bare = type("Bare", (), {"name": "BareAlgo"})
    assert registry.register(Bare) is Bare and registry.get_algorithm("barealgo") is Bare
