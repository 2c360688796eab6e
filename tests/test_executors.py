"""Executors agree: every registered algorithm under every executor in EXECUTORS.

Each executor is compared with an independent serial run (the protocol loop on a fresh
replica per client, no executor code): serial and parallel give its global models and
client states bit for bit (same intra-op thread count per client); vectorized matches
within 1e-5 relative. The toy problem has clients of different sizes (different K_i,
short last batches), momentum and weight decay, so masking of finished clients and of
their optimiser buffers is exercised.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import warnings

import pytest
import torch
from torch import nn

from fedtorch.algorithms import LocalSGD, available_algorithms, get_algorithm
from fedtorch.algorithms.base import FedAlgorithm
from fedtorch.data import FederatedData, TensorDataset
from fedtorch.data.federated import minibatch_indices
from fedtorch.execution import EXECUTORS, ParallelExecutor, SerialExecutor, VectorizedExecutor
from fedtorch.execution.local_training import train_task
from fedtorch.execution.slots import intra_op_threads
from fedtorch.execution.client_stacking import padded_minibatches
from fedtorch.federation import ClientStateStore, SyncSettings, run_sync
from fedtorch.flat import FlatModule
from fedtorch.protocol import Broadcast, FederationInfo, ClientMessage, ClientTask, RoundContext
from fedtorch.seeding import generator

SIZES = [5, 13, 8, 21, 3, 10]  # B = 4: K_i = 2 * ceil(n_i / 4) = 4, 8, 4, 12, 2, 6
BATCH = 4
ROUNDS = 3
LR = 0.1
THREADS = 1  # serial and parallel compute each client with the same intra-op threads


def toy_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3))


@functools.lru_cache(maxsize=None)
def toy_data() -> FederatedData:
    g = torch.Generator().manual_seed(0)
    n = sum(SIZES)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 4, 4, generator=g) + y.view(-1, 1, 1, 1).float()
    ds = TensorDataset(x, y, x, y, 3, "toy")
    bounds = torch.tensor([0, *SIZES]).cumsum(0).tolist()
    return FederatedData(ds, [torch.arange(a, b) for a, b in zip(bounds, bounds[1:])])


@pytest.fixture(scope="module")
def executors():
    data = toy_data().data
    args = (toy_model, data.train_x, data.train_y, BATCH, nn.functional.cross_entropy)
    built = {
        "serial": SerialExecutor(*args, threads=THREADS),
        "parallel": ParallelExecutor(*args, devices=["cpu/0", "cpu/1"], threads=THREADS),
        "vectorized": VectorizedExecutor(*args),
    }
    yield built
    built["parallel"].close()


def make_algorithm(name: str):
    cls = get_algorithm(name)
    steps = [2 * -(-n // BATCH) for n in SIZES]  # local_epochs = 2 in train()
    info = FederationInfo(num_clients=len(SIZES), lr=LR, total_samples=sum(SIZES), mean_local_steps=sum(steps) / len(steps))
    return cls(cls.Hparams(), LocalSGD(momentum=0.9, weight_decay=1e-3), federation=info)


def initial_model() -> torch.Tensor:
    torch.manual_seed(0)
    return FlatModule(toy_model()).params.clone()


def train(algorithm, executor, rounds: int = ROUNDS, **options):
    data = toy_data()
    x0 = initial_model()
    store = ClientStateStore()
    settings = SyncSettings(**{"rounds": rounds, "clients_per_round": 4, "batch_size": BATCH, "local_epochs": 2, "lr": LR, "seed": 3, **options})
    server = run_sync(algorithm, executor, data, algorithm.init_server(x0), store, settings)
    return server, store


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative distance; integer tensors (counters, versions) must be equal."""
    if not b.is_floating_point():
        return 0.0 if torch.equal(a, b) else float("inf")
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def test_every_executor_is_registered():
    assert set(EXECUTORS) == {"serial", "parallel", "vectorized"}


class IndependentSerial:
    """The reference every executor is checked against, written without executor code:
    each client is trained by the protocol loop (``train_task``) on a model replica built
    afresh for it, in the caller's thread with THREADS intra-op threads. A fault in how an
    executor reuses its replica, moves states, orders results or sets threads shows up as
    a difference from this run."""

    def run(self, algorithm, broadcast, tasks, states):
        data = toy_data().data
        with intra_op_threads(THREADS):
            return [
                train_task(algorithm, FlatModule(toy_model()), data.train_x, data.train_y, task, BATCH, broadcast, state,
                           nn.functional.cross_entropy)
                for task, state in zip(tasks, states)
            ]


@functools.lru_cache(maxsize=None)
def reference_run(algorithm: str):
    """(server state, client states) of the independent serial run of ``algorithm``."""
    server, store = train(make_algorithm(algorithm), IndependentSerial())
    return server, store.state_dict()


@pytest.mark.parametrize("mode", sorted(EXECUTORS))
@pytest.mark.parametrize("algorithm", available_algorithms())
def test_executor_matches_serial(executors, algorithm, mode):
    reference, ref_states = reference_run(algorithm)
    server, store = train(make_algorithm(algorithm), executors[mode])
    assert server.round == reference.round == ROUNDS
    assert sorted(store.state_dict()) == sorted(ref_states)
    pairs = [(server.x, reference.x)] + [
        (store.state_dict()[c][k], v) for c, s in ref_states.items() for k, v in s.items()
    ]
    pairs += [(server.opt[k], v) for k, v in reference.opt.items()] + [(server.extra[k], v) for k, v in reference.extra.items()]
    if mode == "vectorized":
        assert all(rel(a, b) <= 1e-5 for a, b in pairs), max(rel(a, b) for a, b in pairs)
    else:
        assert all(torch.equal(a, b) for a, b in pairs)
    # the agreement means something: training moved the model from x0 (train()'s start)
    # far more than the vectorised tolerance
    moved = rel(reference.x, initial_model())
    assert bool(torch.isfinite(reference.x).all()) and moved > 1e-3, moved


@pytest.mark.parametrize("mode", ["parallel", "vectorized"])
def test_stragglers_and_early_stopping_match_serial(executors, mode):
    """Partial work (stragglers keep) and local early stopping go through every executor;
    the vectorised one trains early-stopping clients one at a time (and warns), so all
    three give the serial executor's bits."""
    options = {"local_epochs": 6, "straggler_fraction": 0.5, "straggler_policy": "keep", "early_stopping": 1}
    reference, _ = train(make_algorithm("fedprox"), executors["serial"], **options)
    if mode == "vectorized":
        with pytest.warns(RuntimeWarning, match="early stopping"):
            server, _ = train(make_algorithm("fedprox"), VectorizedExecutor(toy_model, *executor_data()), **options)
    else:
        server, _ = train(make_algorithm("fedprox"), executors[mode], **options)
    assert torch.equal(server.x, reference.x)
    unstopped, _ = train(make_algorithm("fedprox"), executors["serial"], **{**options, "early_stopping": 0})
    assert not torch.equal(unstopped.x, reference.x)  # early stopping did cut some client short


def conv_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 3))


def test_convolutional_model_agrees_across_executors():
    """Convolution weights live channels-last in the flat vector; all three executors
    read and write that layout alike (serial = parallel bit for bit, vectorised 1e-5)."""
    data = toy_data().data
    args = (conv_model, data.train_x, data.train_y, BATCH, nn.functional.cross_entropy)
    runs = {}
    parallel, vectorized = ParallelExecutor(*args, devices=["cpu/0", "cpu/1"], threads=THREADS), VectorizedExecutor(*args)
    assert vectorized.fallback is None  # really vectorised, not the serial fallback
    try:
        for name, ex in (("serial", SerialExecutor(*args, threads=THREADS)), ("parallel", parallel), ("vectorized", vectorized)):
            store = ClientStateStore()
            torch.manual_seed(0)
            x0 = FlatModule(conv_model()).params.clone()
            algo = make_algorithm("fedavg")
            settings = SyncSettings(rounds=ROUNDS, clients_per_round=4, batch_size=BATCH, local_epochs=2, lr=LR, seed=3)
            runs[name] = run_sync(algo, ex, toy_data(), algo.init_server(x0), store, settings).x
    finally:
        parallel.close()
    assert torch.equal(runs["parallel"], runs["serial"])
    assert rel(runs["vectorized"], runs["serial"]) <= 1e-5
    assert not torch.equal(runs["serial"], x0)


def executor_data():
    data = toy_data().data
    return data.train_x, data.train_y, BATCH, nn.functional.cross_entropy


# ---- vectorised executor: its convention, step by step ----------------------------------
class ControlVariate(FedAlgorithm):
    """A test algorithm using every hook: client state, a perturbation (grad_at), a
    direction with state, a momentum-like buffer of its own and a message built from state.
    Written once against the protocol; it must give the same numbers under every executor."""

    name = "control_variate_test"

    def init_client(self, x0):
        return {"c": torch.zeros_like(x0)}

    def perturb(self, run):
        return run.y + 0.01 * run.state["c"]

    def direction(self, run, g):
        trace = run.buffers.get("trace")
        run.buffers["trace"] = g.clone() if trace is None else 0.5 * trace + g
        return g - run.state["c"]

    def finish_local(self, run, loss):
        message = self.message(run, loss)
        c = run.state["c"] + (run.broadcast.x - run.y) / (run.ctx.num_steps * run.ctx.lr) - run.buffers["trace"]
        return message, {"c": c}


@pytest.mark.parametrize("mode", ["parallel", "vectorized"])
def test_stateful_perturbing_algorithm_matches_serial(executors, mode):
    algo = ControlVariate(local=LocalSGD(momentum=0.5))
    reference, ref_store = train(algo, executors["serial"], rounds=4)
    server, store = train(algo, executors[mode], rounds=4)
    tol = 1e-5 if mode == "vectorized" else 0.0
    assert rel(server.x, reference.x) <= tol
    # c = (x - y) / (K lr) - trace cancels: batched GEMMs' rounding (1e-7 relative in x)
    # comes out of the difference about 10x larger (1.2e-5 measured on one CPU, AVX-512)
    for c, state in ref_store.state_dict().items():
        assert rel(store.state_dict()[c]["c"], state["c"]) <= 10 * tol


def one_round_tasks(sizes_steps, round_=2, seed=5):
    data = toy_data()
    tasks = []
    for c, steps in sizes_steps:
        n = data.num_samples(c)
        tasks.append(ClientTask(RoundContext(round_, c, seed, n, steps, 0.1), data.client_indices[c]))
    return tasks


def test_vectorized_per_client_results_with_masked_clients(executors):
    """Clients stop at their own K_i (2 .. 12 steps) with momentum: each client's message,
    loss and step count equal the serial executor's, client by client."""
    algo = make_algorithm("fedavg")
    tasks = one_round_tasks([(0, 4), (1, 8), (3, 12), (4, 2), (2, 1)])
    torch.manual_seed(1)
    bcast = Broadcast(x=FlatModule(toy_model()).params.clone())
    states = [{} for _ in tasks]
    want = executors["serial"].run(algo, bcast, tasks, states)
    got = executors["vectorized"].run(algo, bcast, tasks, states)
    assert [r.client_id for r in got] == [0, 1, 3, 4, 2]
    for a, b in zip(got, want):
        assert (a.message.num_steps, a.message.num_samples) == (b.message.num_steps, b.message.num_samples)
        assert rel(a.message.delta, b.message.delta) <= 1e-6
        assert a.message.loss == pytest.approx(b.message.loss, rel=1e-6)


class FirstFeature(nn.Module):
    """Logistic regression on the first input feature: P = 3 weights + 3 biases = 6, the
    number of clients in the toy federation (so a shared (P,) buffer has C entries)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 3)

    def forward(self, x):
        return self.lin(x.flatten(1)[:, :1])


class SharedAnchor(FedAlgorithm):
    """Buffers shared by every client of a chunk, (P,) like ``run.broadcast.x``: an anchor
    that starts at x^t and is halved in place at every step, and a shift created at step 2
    (when the 2-step client has finished), beside the per-client momentum buffer."""

    name = "shared_anchor_test"

    def direction(self, run, g):
        b = run.buffers
        if "anchor" in b:
            b["anchor"].mul_(0.5)
        else:
            b["anchor"] = run.broadcast.x.clone()
        if run.step == 2:
            b["shift"] = run.broadcast.x + 1.0
        return g + 0.5 * (run.y - b["anchor"]) + 0.1 * b.get("shift", 0.0)


def test_vectorized_does_not_mask_a_shared_buffer_as_large_as_the_chunk(executors):
    """A shared (P,) buffer with P = C is not a stack of C clients: masking finished
    clients (K_i = 12 .. 1) must leave it as the step made it, so every client's message
    is the serial one; per-client momentum ((C, P) = (6, 6)) is still masked."""
    args = (FirstFeature, *executor_data())
    algo = SharedAnchor(local=LocalSGD(momentum=0.9))
    tasks = one_round_tasks([(3, 12), (1, 8), (5, 6), (0, 4), (4, 2), (2, 1)])
    torch.manual_seed(2)
    bcast = Broadcast(x=FlatModule(FirstFeature()).params.clone())
    ex = VectorizedExecutor(*args, max_clients_per_step=len(tasks))
    assert ex.fallback is None and bcast.x.numel() == len(tasks)  # P == C: the ambiguous size
    want = SerialExecutor(*args).run(algo, bcast, tasks, [{}] * len(tasks))
    got = ex.run(algo, bcast, tasks, [{}] * len(tasks))
    for a, b in zip(got, want):
        assert a.client_id == b.client_id
        assert rel(a.message.delta, b.message.delta) <= 1e-6, a.client_id


class LossCopy(FedAlgorithm):
    """Keeps ``run.loss`` as it comes: 0-dim for one client, (C,) for a chunk."""

    name = "loss_copy_test"

    def direction(self, run, g):
        run.buffers["last_loss"] = run.loss.detach()
        return g


def test_vectorized_refuses_a_buffer_it_cannot_tell_per_client_or_shared(executors):
    tasks = one_round_tasks([(0, 4), (1, 4), (2, 4)])  # equal K_i: refused without masking too
    bcast = Broadcast(x=FlatModule(toy_model()).params.clone())
    with pytest.raises(ValueError, match=r"run.buffers\['last_loss'\] has shape \(3,\) .* must be 2-D with one row per client"):
        executors["vectorized"].run(LossCopy(), bcast, tasks, [{}] * 3)


def test_vectorized_chunks_and_eager_path_agree(executors):
    data = toy_data().data
    args = (toy_model, data.train_x, data.train_y, BATCH, nn.functional.cross_entropy)
    algo = make_algorithm("fedavg")
    tasks = one_round_tasks([(0, 4), (1, 8), (3, 12), (4, 2), (5, 6)])
    bcast = Broadcast(x=FlatModule(toy_model()).params.clone())
    whole = executors["vectorized"].run(algo, bcast, tasks, [{}] * 5)
    chunked = VectorizedExecutor(*args, max_clients_per_step=2).run(algo, bcast, tasks, [{}] * 5)
    eager = VectorizedExecutor(*args, trace=False).run(algo, bcast, tasks, [{}] * 5)
    for a, b, c in zip(whole, chunked, eager):
        assert a.client_id == b.client_id == c.client_id
        assert torch.equal(a.message.delta, c.message.delta)  # the traced graph is the same ops
        assert rel(a.message.delta, b.message.delta) <= 1e-6


def test_padded_minibatches_are_the_serial_draws():
    tasks = one_round_tasks([(1, 8), (4, 3), (3, 12)], round_=7)
    index, weight = padded_minibatches(tasks, BATCH, torch.device("cpu"))
    assert index.shape == weight.shape == (12, 3, BATCH)
    for c, task in enumerate(tasks):
        ctx = task.ctx
        gen = generator(ctx.seed, ctx.round, ctx.client_id, "minibatch")
        batches = list(minibatch_indices(task.indices, BATCH, ctx.num_steps, gen))
        for k in range(12):
            n = batches[k].numel() if k < len(batches) else 0
            assert weight[k, c].tolist() == [1.0] * n + [0.0] * (BATCH - n)
            if n:
                assert torch.equal(index[k, c, :n], batches[k])


class DataDependent(nn.Module):
    """A model vmap cannot batch: Python control flow on a tensor value."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 3)

    def forward(self, x):
        x = x.flatten(1)
        return self.lin(x) if x.sum() > 0 else -self.lin(x)


def test_unvectorisable_model_falls_back_to_serial_with_a_message():
    data = toy_data().data
    args = (DataDependent, data.train_x, data.train_y, BATCH, nn.functional.cross_entropy)
    with pytest.warns(RuntimeWarning, match="model DataDependent cannot be vectorised with torch.func"):
        ex = VectorizedExecutor(*args)
    assert ex.fallback is not None and "falling back" not in ex.fallback
    assert "serial fallback" in ex.description
    algo = make_algorithm("fedavg")
    tasks = one_round_tasks([(0, 4), (3, 12)])
    bcast = Broadcast(x=FlatModule(DataDependent()).params.clone())
    want = SerialExecutor(*args).run(algo, bcast, tasks, [{}, {}])
    got = ex.run(algo, bcast, tasks, [{}, {}])
    assert all(torch.equal(a.message.delta, b.message.delta) for a, b in zip(got, want))


def test_vectorized_rejects_bad_chunk_size():
    data = toy_data().data
    with pytest.raises(ValueError, match="execution.max_clients_per_step=0"):
        VectorizedExecutor(toy_model, data.train_x, data.train_y, BATCH, nn.functional.cross_entropy, max_clients_per_step=0)


# ---- parallel executor: threads ---------------------------------------------------------
def test_parallel_workers_leave_the_callers_thread_count_alone():
    data = toy_data().data
    before = torch.get_num_threads()
    with ParallelExecutor(toy_model, data.train_x, data.train_y, BATCH, nn.functional.cross_entropy,
                          devices=["cpu/0", "cpu/1", "cpu/2"], threads=1) as ex:
        assert torch.get_num_threads() == before
        seen = {}
        t = threading.Thread(target=lambda: seen.update(n=torch.get_num_threads()))
        t.start()
        t.join()
        assert seen["n"] == before  # threads started later get the default back
        assert len([w for w in threading.enumerate() if w.name.startswith("fedtorch-slot-")]) >= 3
    assert not any(w.name.startswith("fedtorch-slot-cpu/2") and w.is_alive() for w in threading.enumerate())
    with pytest.raises(RuntimeError, match="closed"):
        ex.run(make_algorithm("fedavg"), Broadcast(x=torch.zeros(1)), [], [])


class Exploding(FedAlgorithm):
    name = "exploding_test"

    def direction(self, run, g):
        if run.ctx.client_id == 3:
            raise FloatingPointError("client 3 diverged")
        return g


def test_parallel_reraises_a_clients_error_and_keeps_working(executors):
    tasks = one_round_tasks([(0, 4), (3, 12), (1, 8)])
    bcast = Broadcast(x=FlatModule(toy_model()).params.clone())
    with pytest.raises(FloatingPointError, match="client 3 diverged"):
        executors["parallel"].run(Exploding(), bcast, tasks, [{}] * 3)
    results = executors["parallel"].run(make_algorithm("fedavg"), bcast, tasks, [{}] * 3)
    assert [r.client_id for r in results] == [0, 3, 1]


def test_client_message_unstack_round_trip():
    msgs = [ClientMessage(torch.full((3,), float(i)), 10 + i, 2 + i, 0.5 * i) for i in range(3)]
    back = ClientMessage.stack(msgs).unstack()
    assert [dataclasses.astuple(m)[1:] for m in back] == [dataclasses.astuple(m)[1:] for m in msgs]
    assert all(torch.equal(a.delta, b.delta) for a, b in zip(back, msgs))


def test_no_warnings_for_vectorisable_models():
    data = toy_data().data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex = VectorizedExecutor(toy_model, data.train_x, data.train_y, BATCH, nn.functional.cross_entropy)
    assert ex.fallback is None and ex.max_clients_per_step > 100


def test_a_slot_that_cannot_start_is_an_error_not_a_hang(monkeypatch):
    data = toy_data().data
    args = (toy_model, data.train_x, data.train_y, BATCH, nn.functional.cross_entropy)
    with pytest.raises(ValueError, match="execution.threads=0 is not allowed"):
        ParallelExecutor(*args, devices=["cpu/0", "cpu/1"], threads=0)
    real = torch.set_num_threads

    def failing(n):
        if threading.current_thread().name == "fedtorch-slot-cpu/1":
            raise RuntimeError("no threads for you")
        real(n)

    monkeypatch.setattr(torch, "set_num_threads", failing)
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="slot cpu/1 could not start: no threads for you"):
        ParallelExecutor(*args, devices=["cpu/0", "cpu/1"], threads=1)
    assert threading.active_count() == before  # both workers were stopped
