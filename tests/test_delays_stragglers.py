"""Delay models, early stopping in the local-training loop, and stragglers in synchronous rounds."""

import math

import pytest
import torch
from torch import nn

from fedtorch.algorithms import get_algorithm
from fedtorch.data import FederatedData, TensorDataset
from fedtorch.execution import SerialExecutor
from fedtorch.federation import ClientStateStore, SyncSettings, run_sync
from fedtorch.federation.delays import DelayError, DelayModel, read_trace
from fedtorch.federation.stragglers import choose_stragglers, plan_work
from fedtorch.flat import FlatModule
from fedtorch.protocol import Broadcast, ClientTask, RoundContext

# ------------------------------------------------------------------ delay models


def _draws(model, n=4000):
    return torch.tensor([model.duration(0, w, 1, 0) for w in range(n)], dtype=torch.float64)


def test_deterministic_delays_are_compute_plus_network():
    assert DelayModel(model="constant", mean=1.5, step_seconds=0.25).duration(0, 0, 3, 8) == 3.5
    trace = DelayModel(model="trace", trace=((0.1, 2.0), (1.0, 0.0)))
    assert trace.duration(7, 3, 0, 10) == pytest.approx(3.0) and trace.duration(7, 3, 1, 10) == 10.0


@pytest.mark.parametrize("model, mean", [
    (DelayModel(model="uniform", max=2.0), 1.0),
    (DelayModel(model="exponential", mean=3.0), 3.0),
    (DelayModel(model="lognormal", mean=3.0, sigma=0.5), 3.0),
])
def test_random_delays_have_the_stated_mean_and_support(model, mean):
    d = _draws(model)
    assert d.min() >= 0 and abs(d.mean().item() - mean) < 0.1 * mean
    if model.model == "uniform":
        assert d.max() <= 2.0
    assert torch.equal(d, _draws(model))  # seeded by (seed, wave, client): reproducible


def test_bad_delay_models_are_refused(tmp_path):
    with pytest.raises(DelayError, match="delays.mean=-1.0 is not allowed: delays are seconds >= 0"):
        DelayModel(model="exponential", mean=-1.0)
    with pytest.raises(DelayError, match="delays.model='gamma' is not allowed"):
        DelayModel(model="gamma")
    path = tmp_path / "trace.csv"
    path.write_text("client_id,step_seconds,delay_seconds\n0,0.1,2\n2,0.1,1\n")
    with pytest.raises(DelayError, match=r"one row per client 0..2; 2 rows, missing e.g. \[1\]"):
        read_trace(path, 3)
    path.write_text("client_id,step_seconds,delay_seconds\n0,0.1,-2\n")
    with pytest.raises(DelayError, match="seconds must be >= 0"):
        read_trace(path, 1)
    path.write_text("client,seconds\n0,1\n")
    with pytest.raises(DelayError, match="the header must be client_id,step_seconds,delay_seconds"):
        read_trace(path, 1)


# ------------------------------------------------------------------ early stopping


def _one_client(n=12, batch_size=12):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)
    ex = SerialExecutor(lambda: nn.Linear(4, 2), x, y, batch_size, nn.functional.cross_entropy)
    torch.manual_seed(0)
    return ex, FlatModule(nn.Linear(4, 2)).params.detach().clone()


@pytest.mark.parametrize("n, lr, patience, expected_steps", [(1, 0.0, 2, 3), (12, 0.5, 3, 20)])
def test_early_stopping_ends_local_training_and_reports_the_steps_done(n, lr, patience, expected_steps):
    """Full-batch epochs of one step: with lr 0 (one sample, so every epoch loss is the same
    number) the loss never improves and training stops after 1 + patience epochs; with a
    useful lr it keeps improving and runs all 20 epochs."""
    ex, x0 = _one_client(n, n)
    task = ClientTask(RoundContext(0, 0, 0, n, 20, lr, early_stopping=patience), torch.arange(n))
    (result,) = ex.run(get_algorithm("fedavg")(), Broadcast(x0), [task], [{}])
    assert result.message.num_steps == expected_steps


def test_early_stopping_off_runs_every_step():
    ex, x0 = _one_client()
    task = ClientTask(RoundContext(0, 0, 0, 12, 20, 0.0), torch.arange(12))
    (result,) = ex.run(get_algorithm("fedavg")(), Broadcast(x0), [task], [{}])
    assert result.message.num_steps == 20


# ------------------------------------------------------------------ stragglers


def test_stragglers_are_a_seeded_floor_fraction_of_the_selection():
    clients = list(range(0, 100, 10))
    picked = choose_stragglers(0, 4, clients, 0.9)
    assert len(picked) == 9 and set(picked) < set(clients) and picked == choose_stragglers(0, 4, clients, 0.9)
    assert len(choose_stragglers(0, 4, clients, 0.55)) == 5 and choose_stragglers(0, 4, clients[:1], 0.9) == []
    assert choose_stragglers(0, 5, clients, 0.5) != choose_stragglers(0, 4, clients, 0.5)
    with pytest.raises(ValueError, match=r"stragglers.fraction=1.0 is not allowed: must be in \[0, 1\)"):
        choose_stragglers(0, 0, clients, 1.0)


def _tasks(epochs=5, batch_size=4):
    return [ClientTask(RoundContext(2, c, 0, 8 + c, epochs * math.ceil((8 + c) / batch_size), 0.1), torch.arange(8 + c))
            for c in range(10)]


def test_drop_removes_the_stragglers_and_keep_cuts_their_epochs():
    settings = dict(rounds=1, clients_per_round=10, batch_size=4, local_epochs=5, lr=0.1, straggler_fraction=0.5)
    late = set(choose_stragglers(0, 2, list(range(10)), 0.5))
    dropped = plan_work(_tasks(), 2, SyncSettings(**settings, straggler_policy="drop"))
    assert {t.ctx.client_id for t in dropped} == set(range(10)) - late
    kept = plan_work(_tasks(), 2, SyncSettings(**settings, straggler_policy="keep", early_stopping=4))
    full = {t.ctx.client_id: t.ctx.num_steps for t in _tasks()}
    for t in kept:
        per_epoch = math.ceil(t.ctx.num_samples / 4)
        if t.ctx.client_id in late:
            assert t.ctx.num_steps % per_epoch == 0 and 1 <= t.ctx.num_steps // per_epoch <= 5
        else:
            assert t.ctx.num_steps == full[t.ctx.client_id]
        assert t.ctx.early_stopping == 4
    assert sum(t.ctx.num_steps for t in kept) < sum(full.values())  # the stragglers did partial work


def test_sync_rounds_with_dropped_and_kept_stragglers():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(80, 4, generator=g), torch.randint(0, 2, (80,), generator=g)
    data = FederatedData(TensorDataset(x, y, x, y, 2, "toy"), [torch.arange(i * 8, i * 8 + 8) for i in range(10)])
    ex = SerialExecutor(lambda: nn.Linear(4, 2), x, y, 4, nn.functional.cross_entropy)
    torch.manual_seed(0)
    x0 = FlatModule(nn.Linear(4, 2)).params.detach().clone()
    reports = {}
    for policy in ("drop", "keep"):
        alg = get_algorithm("fedprox")()
        s = SyncSettings(rounds=3, clients_per_round=10, batch_size=4, local_epochs=6, lr=0.1,
                         straggler_fraction=0.9, straggler_policy=policy)
        reports[policy] = []
        run_sync(alg, ex, data, alg.init_server(x0), ClientStateStore(), s, on_round=lambda st, r: reports[policy].append(r))
    assert [len(r.results) for r in reports["drop"]] == [1, 1, 1]
    assert [len(r.results) for r in reports["keep"]] == [10, 10, 10]
    for drop, keep in zip(reports["drop"], reports["keep"]):
        (survivor,) = drop.results  # the one non-straggler does all its work under both policies
        steps = {r.client_id: r.message.num_steps for r in keep.results}
        assert survivor.message.num_steps == steps[survivor.client_id] == 12
        assert sorted(steps.values())[:9] != [12] * 9


# ------------------------------------------------------------------ one rule, one message


def test_each_rule_gives_the_same_message_in_the_config_and_in_the_loops(tiny_experiment):
    """The loops' settings and the config call the same rule: a bad value gives the same
    words whether it comes from the command line or from code that builds the settings."""
    from fedtorch.experiment.config import apply_overrides, load_experiment, validate
    from fedtorch.experiment.errors import ConfigError
    from fedtorch.experiment.runner import prepare
    from fedtorch.federation.async_loop import AsyncServer, AsyncSettings, run_async
    from fedtorch.federation.sampling import sample_clients

    base, _ = load_experiment(tiny_experiment)

    def config_message(*overrides):
        with pytest.raises(ConfigError) as e:
            validate(apply_overrides(base, list(overrides)))
        return str(e.value)

    def loop_message(call):
        with pytest.raises(ValueError) as e:
            call()
        return str(e.value)

    common = dict(batch_size=4, lr=0.1)
    prep = prepare(validate(base))
    server = prep.algorithm.init_server(prep.x0)

    def async_server(**kw):
        return AsyncServer(get_algorithm("fedasync")(), prep.executor, prep.data, server, ClientStateStore(),
                           AsyncSettings(updates=1, concurrency=kw.pop("concurrency", 2), **common, **kw), DelayModel())

    cases = [
        (["stragglers.policy=wait"], lambda: SyncSettings(rounds=1, clients_per_round=2, straggler_policy="wait", **common)),
        (["stragglers.fraction=1.0"], lambda: AsyncSettings(updates=1, concurrency=2, straggler_fraction=1.0, **common)),
        (["federation.weighting=size"], lambda: SyncSettings(rounds=1, clients_per_round=2, weighting="size", **common)),
        (["federation.clients_per_round=11"], lambda: sample_clients(0, 0, 10, 11)),
        (["federation.mode=async", "algorithm.name=fedasync", "federation.concurrency=11"], lambda: async_server(concurrency=11)),
        (["federation.mode=async", "algorithm.name=fedasync", "federation.clock=threads"],
         lambda: run_async(async_server(), clock="threads")),
        (["federation.mode=async", "algorithm.name=fedasync", "client.lr_delay_alpha=-1"],
         lambda: async_server(lr_delay_alpha=-1.0)),
        (["federation.mode=async", "algorithm.name=fedavg", "federation.buffer_size=0"], lambda: async_server(buffer_size=0)),
    ]
    for overrides, call in cases:
        assert config_message(*overrides) == loop_message(call), overrides
