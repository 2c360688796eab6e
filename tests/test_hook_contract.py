"""One hook contract for every loop: the asynchronous loop honours ``num_local_steps``,
``after_aggregate`` and ``eval_model`` as the synchronous loop does, and a buffered async
run (zero delays, concurrency = buffer = M < N) is the synchronous run bit for bit.

Why bit for bit (``torch.equal``), not a tolerance: with zero delays every client of a wave
arrives at the same instant, in dispatch order (client-id order, the synchronous cohort's
order); the buffer is stacked in that order and handed to the algorithm's own ``aggregate``
with the same weights (s(0) = 1 leaves the messages untouched), the executor trains the same
tasks (same wave = round index, same K_i, same lr, same minibatch seeds). Every floating-point
operation is therefore the same one in the same order.
"""

import dataclasses

import pytest
import torch
from torch import nn

from fedtorch.algorithms import get_algorithm
from fedtorch.algorithms.base import FedAlgorithm
from fedtorch.data import FederatedData, TensorDataset
from fedtorch.execution import SerialExecutor
from fedtorch.federation import ClientStateStore, SyncSettings, run_sync
from fedtorch.federation.async_loop import AsyncServer, AsyncSettings, run_async
from fedtorch.federation.delays import DelayModel
from fedtorch.federation.planning import HookError, Hooks
from fedtorch.flat import FlatModule
from fedtorch.protocol import FederationInfo

SIZES = [10, 7, 13, 10, 4, 16, 9]  # seven clients of unequal n_i; with B = 4 and E = 2, K_i in {4, 8, 14, 10, 2, ...}
M = 3  # clients per round = concurrency = buffer size, M < N


def toy():
    g = torch.Generator().manual_seed(0)
    n = sum(SIZES)
    x, y = torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)
    bounds = torch.tensor([0, *SIZES]).cumsum(0).tolist()
    data = FederatedData(TensorDataset(x, y, x, y, 3, "toy"), [torch.arange(a, b) for a, b in zip(bounds, bounds[1:])])
    torch.manual_seed(0)
    x0 = FlatModule(nn.Linear(5, 3)).params.detach().clone()
    ex = SerialExecutor(lambda: nn.Linear(5, 3), x, y, 4, nn.functional.cross_entropy)
    return data, ex, x0


def make(name, **hp):
    """The algorithm with the hyper-parameters its Hparams has, and the toy's FederationInfo."""
    cls = get_algorithm(name)
    fields = {f.name for f in dataclasses.fields(cls.Hparams)}
    steps = [2 * -(-n // 4) for n in SIZES]  # E = 2, B = 4
    info = FederationInfo(num_clients=len(SIZES), lr=0.1, total_samples=sum(SIZES), mean_local_steps=sum(steps) / len(steps))
    return cls(cls.Hparams(**{k: v for k, v in hp.items() if k in fields}), federation=info)


def run_both(make_algorithm, rounds=4, weighting="samples"):
    """The sync run and the buffered async run; each returns (final server, evaluated models,
    stored client states, steps per (round, client))."""
    common = dict(batch_size=4, local_epochs=2, lr=0.1, seed=3, weighting=weighting)
    out = []
    for mode in ("sync", "async"):
        data, ex, x0 = toy()
        alg = make_algorithm()
        store, evaluated, steps = ClientStateStore(), [], {}

        def evaluate(x, buffers=None):
            evaluated.append(x.clone())
            return 0.0, 0.0

        if mode == "sync":
            s = SyncSettings(rounds=rounds, clients_per_round=M, **common)
            server = run_sync(alg, ex, data, alg.init_server(x0), store, s, evaluate,
                              on_round=lambda st, r: steps.update({(r.round - 1, c.client_id): c.message.num_steps
                                                                   for c in r.results}))
        else:
            s = AsyncSettings(updates=rounds, concurrency=M, buffer_size=M, **common)
            core = AsyncServer(alg, ex, data, alg.init_server(x0), store, s, DelayModel(model="constant", mean=0.0),
                               evaluate, on_update=lambda st, r: steps.update({(r.record.wave, r.record.client_id):
                                                                                r.record.num_steps}))
            server = run_async(core).server
            assert core.arrivals == M * rounds
        out.append((server, evaluated, store.state_dict(), steps))
    return out


class VaryingSteps(get_algorithm("fedavg")):
    """FedAvg with its own K_i: 1 + (round + 2 client) mod 5 steps (a protocol-level hook)."""

    def num_local_steps(self, round, client_id, seed, default):
        return 1 + (round + 2 * client_id) % 5


CASES = {
    "fedavg": lambda: make("fedavg"),
    "fedavg_own_k": lambda: VaryingSteps(),
    "scaffnew": lambda: make("scaffnew"),
    "scaffnew_random_steps": lambda: make("scaffnew", random_steps=True, p=0.3),
    "fedexp_last_two": lambda: make("fedexp", eval_average_last_two=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_buffered_async_with_zero_delays_is_the_sync_run(name):
    (sync, sync_eval, sync_states, sync_steps), (asyn, async_eval, async_states, async_steps) = run_both(CASES[name])
    assert sync.round == asyn.round == 4
    assert torch.equal(asyn.x, sync.x)
    assert len(async_eval) == len(sync_eval) == 4 and all(torch.equal(a, b) for a, b in zip(async_eval, sync_eval))
    assert async_states.keys() == sync_states.keys()
    for c in sync_states:
        assert sync_states[c].keys() == async_states[c].keys()
        assert all(torch.equal(sync_states[c][k], async_states[c][k]) for k in sync_states[c])
    assert async_steps == sync_steps and len(set(sync_steps.values())) > 1  # unequal K_i, the same in both loops


def test_the_equivalence_is_not_vacuous():
    """The hooks matter here: FedExP's evaluated model is not x^t, Scaffnew keeps non-zero
    states, VaryingSteps' K_i are not the schedule's -- so a loop skipping them differs."""
    (sync, evaluated, _, _), _ = run_both(CASES["fedexp_last_two"], rounds=2)
    assert not torch.equal(evaluated[-1], sync.x)
    (_, _, states, _), _ = run_both(CASES["scaffnew"], rounds=2)
    assert states and all(any(v.abs().sum() > 0 for v in s.values()) for s in states.values())
    (_, _, _, steps), _ = run_both(CASES["fedavg_own_k"], rounds=2)
    assert all(k == 1 + (t + 2 * c) % 5 for (t, c), k in steps.items())


def test_stale_updates_are_scaled_before_the_algorithms_aggregate():
    """Real delays: the buffered step hands the algorithm s(tau) Delta_i (s = 1/sqrt(1 + tau))."""
    seen = []

    class Spy(get_algorithm("fedavg")):
        def aggregate(self, server, messages, weights):
            seen.append((messages.delta.clone(), weights.clone()))
            return super().aggregate(server, messages, weights)

    data, ex, x0 = toy()
    raw = {}
    alg = Spy()
    s = AsyncSettings(updates=6, concurrency=4, buffer_size=2, batch_size=4, lr=0.1, seed=1, weighting="uniform")
    core = AsyncServer(alg, ex, data, alg.init_server(x0), ClientStateStore(), s,
                       DelayModel(model="uniform", max=3.0),
                       on_update=lambda st, r: raw.setdefault(r.record.update, (r.result.message.delta.clone(), r.record.staleness)))
    run_async(core)
    staleness = [raw[u][1] for u in sorted(raw)]
    assert max(staleness) > 0
    for i, (delta, weights) in enumerate(seen):
        for j in range(2):
            d, tau = raw[2 * i + j + 1]
            torch.testing.assert_close(delta[j], d * (1 + tau) ** -0.5, rtol=0, atol=0)
        assert torch.equal(weights, torch.full((2,), 0.5, dtype=torch.float64))


def test_a_per_arrival_rule_gets_after_aggregate_and_eval_model():
    """FedAsync (apply_async): the arriving client's state goes through after_aggregate with
    the new model, and evaluation gets eval_model."""

    class Spy(get_algorithm("fedasync")):
        def after_aggregate(self, server, state):
            return {"version": torch.tensor(float(server.round))}

        def eval_model(self, server):
            return server.x / 2

    data, ex, x0 = toy()
    alg, store, evaluated, versions = Spy(Spy.Hparams()), ClientStateStore(), [], []
    s = AsyncSettings(updates=6, concurrency=2, batch_size=4, lr=0.1, seed=0)

    def on_update(state, report):
        versions.append((report.record.client_id, store.state_dict()[report.record.client_id]["version"].item(),
                         report.record.server_version))

    core = AsyncServer(alg, ex, data, alg.init_server(x0), store, s, DelayModel(model="uniform", max=2.0),
                       lambda x: (evaluated.append(x.clone()), (0.0, 0.0))[1], on_update)
    run_async(core)
    assert len(versions) == 6 and all(v == r for _, v, r in versions)
    assert torch.equal(evaluated[-1], core.server.x / 2)


class Bare:
    """FedAvg through an object with only the required hooks (no optional ones)."""

    def __init__(self):
        self._inner = get_algorithm("fedavg")()
        self.name = "bare"

    def __getattr__(self, name):
        if name in ("num_local_steps", "after_aggregate", "eval_model", "personalization", "buffer_size",
                    "staleness_scale", "apply_async"):
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_an_algorithm_without_optional_hooks_runs_in_both_loops_with_the_defaults():
    (sync, _, _, _), (asyn, _, _, _) = run_both(Bare, rounds=2)
    (ref, _, _, _), _ = run_both(lambda: make("fedavg"), rounds=2)
    assert torch.equal(sync.x, ref.x) and torch.equal(asyn.x, ref.x)


def test_an_algorithm_the_loop_cannot_run_is_refused_naming_the_missing_hook():
    class NoAggregate(FedAlgorithm):
        name = "noagg"
        aggregate = None

    with pytest.raises(HookError, match="'noagg' cannot run in the sync loop: it has no aggregate hook"):
        Hooks(NoAggregate(), "sync")
    with pytest.raises(HookError, match="'noagg' cannot run in the async loop: it has no apply_async or aggregate hook"):
        Hooks(NoAggregate(), "async")


def test_a_straggler_cut_is_schedule_work_that_the_algorithm_maps_to_loop_steps():
    """Per-FedAvg turns k meta steps into 2k loop steps; a straggler cut to e_i epochs must
    make e_i epochs of *meta* steps (2 x the cut in loop steps), not half of them."""
    from fedtorch.federation.planning import LocalWork, plan_tasks
    from fedtorch.federation.stragglers import straggler_steps

    data, _, _ = toy()
    clients = list(range(len(SIZES)))
    work = LocalWork(batch_size=4, local_epochs=3, lr=0.1, seed=5, straggler_fraction=0.5, straggler_policy="keep")
    plain = plan_tasks(Hooks(make("fedavg")), data, 2, clients, work)
    meta = plan_tasks(Hooks(make("perfedavg")), data, 2, clients, work)
    cut = 0
    for a, b in zip(plain, meta):
        full = 3 * -(-SIZES[a.ctx.client_id] // 4)
        assert b.ctx.num_steps == 2 * a.ctx.num_steps
        if a.ctx.num_steps < full:
            cut += 1
            assert a.ctx.num_steps == straggler_steps(5, 2, a.ctx.client_id, SIZES[a.ctx.client_id], 4, 3, None)
    assert cut >= 1  # the seed gives at least one straggler whose work is really cut
