"""Asynchronous server rules and the simulated-time loop: exact equivalences, staleness,
delay-aware learning rates, determinism, and the asyncio clock agreeing with the simulated one."""

import math

import pytest
import torch
from torch import nn

from fedtorch.algorithms import get_algorithm
from fedtorch.algorithms.staleness import constant, hinge, polynomial, staleness_weight
from fedtorch.data import FederatedData, TensorDataset
from fedtorch.execution import EXECUTORS
from fedtorch.federation import ClientStateStore, SyncSettings, run_sync, sample_clients
from fedtorch.federation.async_loop import AsyncServer, AsyncSettings, run_async
from fedtorch.federation.delays import DelayModel
from fedtorch.federation.planning import HookError, Hooks
from fedtorch.federation.server_steps import server_step
from fedtorch.flat import FlatModule
from fedtorch.protocol import Broadcast, ClientMessage, ClientTask, RoundContext, ServerState

SIZES = [10, 7, 13, 10, 4, 16]  # six clients of different sizes: different K_i


def toy(batch_size=4, executor="serial", **executor_options):
    """A linear classifier on 60 random points split into six clients, and an executor."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 5, generator=g), torch.randint(0, 3, (60,), generator=g)
    bounds = torch.tensor([0, *SIZES]).cumsum(0).tolist()
    data = FederatedData(TensorDataset(x, y, x, y, 3, "toy"), [torch.arange(a, b) for a, b in zip(bounds, bounds[1:])])
    torch.manual_seed(0)
    x0 = FlatModule(nn.Linear(5, 3)).params.detach().clone()
    ex = EXECUTORS[executor](lambda: nn.Linear(5, 3), x, y, batch_size, nn.functional.cross_entropy, **executor_options)
    return data, ex, x0


def make(name, **hp):
    cls = get_algorithm(name)
    return cls(cls.Hparams(**hp))


def run(alg, settings, delays, clock="simulated", executor="serial", executor_options=None, **kw):
    data, ex, x0 = toy(settings.batch_size, executor, **(executor_options or {}))
    records = []
    core = AsyncServer(alg, ex, data, alg.init_server(x0), ClientStateStore(), settings, delays,
                       on_update=lambda s, r: records.append(r.record))
    run_async(core, clock=clock, **kw)
    return core, records


# ------------------------------------------------------------------ staleness weights


def test_staleness_functions_match_their_formulas():
    assert constant(7) == 1.0
    assert polynomial(0, 0.5) == 1.0 and polynomial(3, 0.5) == 0.5 and polynomial(8, 1.0) == 1 / 9
    assert hinge(4, 10, 4) == 1.0 and hinge(6, 10, 4) == 1 / 21
    assert staleness_weight("hinge", 5, 2.0, 4.0) == 1 / 3
    with pytest.raises(ValueError, match="unknown staleness function 'linear'"):
        staleness_weight("linear", 1, 0.5, 0)
    with pytest.raises(ValueError, match="staleness must be >= 0"):
        staleness_weight("constant", -1, 0, 0)


def test_bad_hyperparameters_are_refused():
    cls = get_algorithm("fedasync")
    with pytest.raises(ValueError, match=r"algorithm.alpha=1.5 is not allowed: must be in \(0, 1\]"):
        cls.Hparams(alpha=1.5)
    with pytest.raises(ValueError, match="algorithm.staleness='cubic' is not allowed"):
        cls.Hparams(staleness="cubic")
    with pytest.raises(ValueError, match="algorithm.buffer_size=0 is not allowed"):
        get_algorithm("fedbuff").Hparams(buffer_size=0)


# ------------------------------------------------------------------ server rules by hand


def _message(delta, model=None):
    base = ClientMessage(delta=torch.tensor(delta), num_samples=5, num_steps=2, loss=0.5)
    if model is None:
        return base
    from fedtorch.algorithms.fedasync import ModelMessage

    return ModelMessage(**vars(base), model=torch.tensor(model))


def test_fedasync_mixes_the_local_model_with_the_staleness_discounted_weight():
    alg = make("fedasync", alpha=0.5, staleness="polynomial", staleness_a=1.0)
    server = ServerState(x=torch.tensor([1.0, 2.0, 3.0]), round=4)
    out = alg.apply_async(server, _message([0.0, 0.0, 0.0], model=[3.0, 2.0, 1.0]), staleness=1)
    # a = 0.5 * (1 + 1)^-1 = 0.25: x <- 0.75 x + 0.25 y
    assert torch.equal(out.x, torch.tensor([1.5, 2.0, 2.5])) and out.round == 5


def test_fedbuff_buffers_k_scaled_updates_then_steps_the_server_optimizer():
    """The loop's buffered step with FedBuff's K and s, uniform weights: x <- x - (1/K) sum s(tau) Delta."""
    alg = make("fedbuff", buffer_size=2)  # s(tau) = 1 / sqrt(1 + tau)
    hooks = Hooks(alg, "async")
    step = server_step(alg, hooks, None, concurrency=5, weighting="uniform")
    assert step.buffer_size == 2  # the algorithm's K, not the concurrency
    server = alg.init_server(torch.tensor([1.0, 1.0]))
    first, stored = step.arrive(server, 0, _message([0.4, 0.8]), {}, staleness=3)  # scale 0.5
    assert torch.equal(first.x, server.x) and first.round == 0 and stored == []
    second, stored = step.arrive(first, 1, _message([0.2, -0.2]), {}, staleness=0)  # scale 1
    # x <- x - (0.5 * 0.5 * [0.4, 0.8] + 0.5 * [0.2, -0.2]) = x - [0.2, 0.1]
    torch.testing.assert_close(second.x, torch.tensor([0.8, 0.9]), rtol=0, atol=1e-7)
    assert second.round == 1 and [c for c, _ in stored] == [0, 1] and step.buffer == []


# ------------------------------------------------------------------ equivalences


def test_fedasync_alpha_one_concurrency_one_is_sequential_training():
    """alpha = 1, s = 1, one client in flight: each client starts from the previous one's
    local model, so the run is plain sequential training (bit for bit), whatever the delays."""
    s = AsyncSettings(updates=8, concurrency=1, batch_size=4, local_epochs=2, lr=0.1, seed=3)
    core, records = run(make("fedasync", alpha=1.0, staleness="constant"), s, DelayModel(model="uniform", max=5.0))

    data, ex, x = toy()
    fedavg = get_algorithm("fedavg")()
    for r in range(8):
        (c,) = sample_clients(3, r, data.num_clients, 1)
        n = data.num_samples(c)
        task = ClientTask(RoundContext(r, c, 3, n, 2 * math.ceil(n / 4), 0.1), data.client_indices[c])
        ex.run(fedavg, Broadcast(x), [task], [{}])
        x = ex.replica.params.clone()  # y_{i,K}: the next client starts here
    assert torch.equal(core.server.x, x)
    assert [r.staleness for r in records] == [0] * 8 and core.server.round == 8


def test_fedbuff_k_equal_m_with_zero_delays_is_fedavg():
    """Zero delays, K = concurrency = M = 3 of 6 clients: every buffer is one synchronous
    cohort (same clients, same minibatches, staleness 0), so FedBuff is FedAvg with uniform weights."""
    s = AsyncSettings(updates=4, concurrency=3, batch_size=4, local_epochs=2, lr=0.1, seed=1, weighting="uniform")
    core, records = run(make("fedbuff", buffer_size=3), s, DelayModel(model="constant", mean=0.0))

    data, ex, x0 = toy()
    fedavg = get_algorithm("fedavg")()
    sync = SyncSettings(rounds=4, clients_per_round=3, batch_size=4, local_epochs=2, lr=0.1, seed=1,
                        weighting="uniform")
    reference = run_sync(fedavg, ex, data, fedavg.init_server(x0), ClientStateStore(), sync)
    assert torch.equal(core.server.x, reference.x)
    assert {r.staleness for r in records} == {0} and core.arrivals == 3 * 4


# ------------------------------------------------------------------ the loop's bookkeeping


def test_staleness_times_and_delay_aware_lr_are_logged():
    delays = DelayModel(model="exponential", mean=2.0, step_seconds=0.01)
    s = AsyncSettings(updates=15, concurrency=3, batch_size=4, lr=0.2, lr_delay_alpha=0.5, seed=0)
    core, records = run(make("fedasync"), s, delays)
    assert len(records) == 15 and core.server.round == 15
    arrived = [r.arrived_at for r in records]
    assert arrived == sorted(arrived) and core.now == arrived[-1]
    for r in records:
        duration = r.arrived_at - r.dispatched_at
        assert duration >= r.num_steps * 0.01
        assert r.lr == pytest.approx(0.2 / (1 + 0.5 * duration), rel=1e-12)
        assert r.staleness == r.server_version - 1 - r.version  # FedAsync: one version per arrival
    assert max(r.staleness for r in records) > 0
    in_flight = [sum(r.dispatched_at <= t < r.arrived_at for r in records) for t in arrived[:5]]
    assert max(in_flight) <= 3


def test_max_seconds_stops_the_run_in_simulated_time():
    s = AsyncSettings(updates=10_000, concurrency=2, batch_size=4, lr=0.1, max_seconds=5.0)
    core, records = run(make("fedbuff", buffer_size=2), s, DelayModel(model="constant", mean=1.0))
    assert records and all(r.arrived_at <= 5.0 for r in records)
    assert core.server.round == len(records) // 2 < 10_000


def test_same_seed_same_event_log_and_model_other_seed_differs():
    s = AsyncSettings(updates=12, concurrency=3, batch_size=4, lr=0.1, lr_delay_alpha=0.1, seed=5)
    delays = DelayModel(model="lognormal", mean=3.0, sigma=1.0)
    (a, log_a), (b, log_b) = run(make("fedasync"), s, delays), run(make("fedasync"), s, delays)
    assert log_a == log_b and torch.equal(a.server.x, b.server.x)
    _, log_c = run(make("fedasync"), AsyncSettings(**{**vars(s), "seed": 6}), delays)
    assert log_c != log_a


@pytest.mark.parametrize("executor", ["parallel", "vectorized"])
@pytest.mark.parametrize("name", ["fedasync", "fedbuff"])
def test_async_runs_agree_across_executors(name, executor):
    """Arrivals are trained in batches by whichever executor; the event log (times,
    staleness, delay-aware lr) is the serial one and the model matches it: bit for bit
    under parallel slots (one thread per client, as serial here), within 1e-5 vectorised."""
    s = AsyncSettings(updates=12, concurrency=3, batch_size=4, lr=0.2, lr_delay_alpha=0.1, seed=1)
    delays = DelayModel(model="lognormal", mean=2.0, sigma=0.5)
    hp = {"buffer_size": 2} if name == "fedbuff" else {}
    ref, ref_log = run(make(name, **hp), s, delays, executor_options={"threads": 1})
    options = {"devices": ["cpu/0", "cpu/1"], "threads": 1} if executor == "parallel" else {}
    got, log = run(make(name, **hp), s, delays, executor=executor, executor_options=options)
    if executor == "parallel":
        assert log == ref_log and torch.equal(got.server.x, ref.server.x)
    else:
        assert [(r.client_id, r.staleness, r.arrived_at, r.lr) for r in log] == [(r.client_id, r.staleness, r.arrived_at, r.lr) for r in ref_log]
        assert float((got.server.x - ref.server.x).norm() / ref.server.x.norm()) <= 1e-5


def test_an_algorithm_without_a_server_rule_is_refused():
    """Any algorithm with ``aggregate`` runs asynchronously (buffered); an object with
    neither ``aggregate`` nor ``apply_async`` is refused, naming what it lacks."""
    class NoServerRule:
        name = "half"
        broadcast = init_client = init_server = staticmethod(lambda *a: None)

    s = AsyncSettings(updates=1, concurrency=1, batch_size=4, lr=0.1)
    with pytest.raises(HookError, match="'half' cannot run in the async loop: it has no apply_async or aggregate hook"):
        run(NoServerRule(), s, DelayModel())
    with pytest.raises(HookError, match="federation.buffer_size=2 is not allowed: algorithm 'fedasync' applies every arrival"):
        run(make("fedasync"), AsyncSettings(**{**vars(s), "buffer_size": 2}), DelayModel())


# ------------------------------------------------------------------ asyncio clock


@pytest.mark.parametrize("name, delays", [
    ("fedasync", DelayModel(model="constant", mean=1.0, step_seconds=0.05)),
    ("fedbuff", DelayModel(model="trace", trace=((0.1, 0.5), (0.02, 2.0), (0.0, 1.0), (0.05, 0.0), (0.3, 0.2), (0.01, 3.0)))),
])
def test_asyncio_clock_equals_the_simulated_clock(name, delays):
    """Deterministic delays (the same K_i x step seconds + network delay every time): the
    asyncio run, clients as tasks training in threads and sleeping for real, ends with the
    simulated run's model and event log."""
    s = AsyncSettings(updates=10, concurrency=3, batch_size=4, lr=0.1, seed=2)
    hp = {"buffer_size": 2} if name == "fedbuff" else {}
    sim, sim_log = run(make(name, **hp), s, delays)
    real, real_log = run(make(name, **hp), s, delays, clock="asyncio", sleep_scale=1e-4)
    assert torch.equal(sim.server.x, real.server.x) and sim_log == real_log
    assert max(r.staleness for r in sim_log) > 0  # a real asynchronous schedule, not a sequential one


def test_a_non_finite_update_is_logged_but_not_applied():
    class PoisonClientZero(get_algorithm("fedasync")):
        def message(self, run, loss):
            m = super().message(run, loss)
            if run.ctx.client_id == 0:
                m.delta = torch.full_like(m.delta, float("nan"))
            return m

    s = AsyncSettings(updates=10, concurrency=6, batch_size=4, lr=0.1)
    core, records = run(PoisonClientZero(PoisonClientZero.Hparams()), s, DelayModel(model="uniform", max=1.0))
    rejected = [r for r in records if not r.applied]
    assert rejected and {r.client_id for r in rejected} == {0}
    assert all(r.server_version == prev.server_version for r, prev in zip(records[1:], records) if not r.applied)
    assert torch.isfinite(core.server.x).all() and core.server.round == 10
