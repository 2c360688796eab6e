"""Asynchronous federation in simulated time, for every algorithm: FedAsync-style rules
(``apply_async(server, message, staleness)``, :mod:`fedtorch.protocol`) per arrival, every
other algorithm through FedBuff's buffered step around its own ``aggregate``
(:mod:`fedtorch.federation.server_steps`).

The clock is an event queue, not the wall clock: nothing sleeps. ``concurrency`` clients
are in flight at once. A client dispatched at simulated time ``now`` gets the current global
model (version v = ``server.round``) and arrives at ``now + duration`` seconds, the duration
drawn from a :class:`~fedtorch.federation.delays.DelayModel`. Arrivals are applied one at a
time in order of (arrival time, dispatch order); after all arrivals that share one instant,
the freed slots are refilled with a new *dispatch wave* from the then-current model::

    dispatch wave 0 (concurrency clients, model v0)
    loop:  pop the earliest arrival time t; for each client arriving at t (dispatch order):
               staleness = server.round - v_client
               server = step.arrive(server, message, staleness)   # per arrival, or buffered
           dispatch a wave of as many clients as arrived, from the model at t

Rules that make runs reproducible and comparable with synchronous ones:

* wave w picks the first free clients of the permutation ``generator(seed, w,
  "client_sampling")`` (sorted by id): with no client in flight that is exactly
  ``sample_clients(seed, w, N, k)``, the synchronous round-w cohort;
* a wave's tasks are planned by :func:`~fedtorch.federation.planning.plan_tasks`, the
  synchronous loop's planner, with the wave as the round: the algorithm's
  ``num_local_steps``, stragglers and early stopping apply as in a round, and
  ``RoundContext.lr`` is the delay-aware rate gamma_0 / (1 + alpha_lr * duration) (duration
  in simulated seconds; alpha_lr = 0 gives gamma_0 exactly);
* the optional hooks are honoured as in the synchronous loop
  (:class:`~fedtorch.federation.planning.Hooks`): a client's state is stored through
  ``after_aggregate`` once its update is aggregated, and ``evaluate`` gets ``eval_model``;
* the executor trains a wave when it is dispatched (one ``executor.run`` per wave, so waves
  can be trained in batches); only the order of server updates follows simulated time;
* an update holding NaN/Inf is not applied (``UpdateRecord.applied`` is false).

Consequences (tested): with FedAsync, alpha = 1, s = 1 and concurrency 1 the run is plain
sequential training, client after client; with the buffered step, zero delays and
K = concurrency = M every buffer is one synchronous cohort, so the run equals the
synchronous run of the same algorithm bit for bit (FedAvg, Scaffnew, FedExP, FedBuff = FedAvg).
The loop stops when ``server.round`` reaches ``updates`` or the next arrival is later than
``max_seconds``; clients still in flight then are discarded.

Usage::

    core = AsyncServer(algorithm, executor, data, algorithm.init_server(x0), ClientStateStore(),
                       AsyncSettings(updates=100, concurrency=10, batch_size=10, lr=0.03),
                       DelayModel(model="lognormal", mean=1200.0, sigma=1.0))
    run_async(core)                  # core.server: final state; core.now: simulated seconds

``run_async(core, clock="asyncio")`` (:mod:`fedtorch.federation.asyncio_loop`) runs the same
server with clients as asyncio tasks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from fedtorch.data.federated import FederatedData
from fedtorch.federation.async_snapshot import from_plain, to_plain
from fedtorch.federation.asyncio_loop import serve
from fedtorch.federation.client_states import ClientStateStore
from fedtorch.federation.delays import DelayModel
from fedtorch.federation.async_settings import CLOCKS, AsyncSettings, check_async_times, check_clock, check_concurrency  # noqa: F401
from fedtorch.federation.planning import Hooks, plan_tasks
from fedtorch.federation.server_steps import server_step
from fedtorch.protocol import Broadcast, ClientResult, ClientTask, ServerState, State
from fedtorch.seeding import generator

@dataclass
class Job:
    """One dispatched client, from dispatch until its arrival is applied.

    Attributes:
        seq: dispatch order (ties in arrival time are applied in this order).
        wave: the dispatch wave.
        version: ``server.round`` of the model it received.
        dispatched_at, arrives_at: simulated seconds.
        task: its :class:`ClientTask` (``ctx.round`` = wave, ``ctx.lr`` = delay-aware lr).
        broadcast: what it received (dropped once trained).
        state: its persistent state at dispatch.
        bytes_down: bytes of the broadcast.
    """

    seq: int
    wave: int
    version: int
    dispatched_at: float
    arrives_at: float
    task: ClientTask
    broadcast: Broadcast | None
    state: State
    bytes_down: int

    @property
    def client_id(self) -> int:
        return self.task.ctx.client_id


@dataclass(frozen=True)
class UpdateRecord:
    """One arrival: a row of the per-update log (``updates.csv``). Times in simulated seconds.

    Attributes:
        update: 1-based arrival index.
        client_id, wave: the client and its dispatch wave.
        dispatched_at, arrived_at: when it left and when it arrived.
        version: the model version it trained from.
        staleness: server version at arrival minus ``version``.
        num_steps: local steps actually taken (early stopping may cut K_i short).
        loss: its mean local training loss.
        lr: the learning rate it used.
        applied: whether the update was given to the server step (false: NaN/Inf).
        server_version: ``server.round`` after it was applied.
    """

    update: int
    client_id: int
    wave: int
    dispatched_at: float
    arrived_at: float
    version: int
    staleness: int
    num_steps: int
    loss: float
    lr: float
    applied: bool
    server_version: int


@dataclass
class AsyncReport:
    """What one arrival did (given to the ``on_update`` callback).

    Attributes:
        record: the :class:`UpdateRecord`.
        result: the client's :class:`ClientResult` (``seconds``: its wall-clock training).
        updated: the arrival produced a new global-model version.
        test_loss, test_accuracy: evaluation of the new version, or None.
        seconds: wall seconds since the previous report (training + server rule,
            evaluation excluded).
        bytes_down, bytes_up: bytes sent to / received from this client.
    """

    record: UpdateRecord
    result: ClientResult
    updated: bool
    test_loss: float | None
    test_accuracy: float | None
    seconds: float
    bytes_down: int
    bytes_up: int


class AsyncServer:
    """The server side of an asynchronous run, independent of how time advances.

    Drivers (:func:`run_async`'s event queue, :func:`fedtorch.federation.asyncio_loop.serve`)
    repeat: ``next_arrivals()`` -> ``arrive(job, result)`` for each -> ``dispatch(now)``,
    training dispatched jobs with ``train``.

    Args:
        algorithm: any algorithm: with ``apply_async`` it is applied per arrival, else through
            the buffered step (:func:`~fedtorch.federation.server_steps.server_step`).
        executor: any executor (``run(algorithm, broadcast, tasks, states)``).
        data: the federated data.
        server: the initial server state (``server.round`` = 0).
        store: the client-state store.
        settings: the :class:`AsyncSettings`.
        delays: the :class:`~fedtorch.federation.delays.DelayModel`.
        evaluate: ``x -> (test loss, test accuracy)`` of the algorithm's ``eval_model``,
            called every ``eval_every`` versions.
        on_update: called after every arrival with the server state and an :class:`AsyncReport`.

    Raises:
        HookError: the algorithm has neither ``apply_async`` nor ``aggregate``, or a
            ``buffer_size`` is given for a per-arrival rule.
        ValueError: concurrency outside ``[1, N]`` (:func:`check_concurrency`).
    """

    def __init__(
        self,
        algorithm,
        executor,
        data: FederatedData,
        server: ServerState,
        store: ClientStateStore,
        settings: AsyncSettings,
        delays: DelayModel,
        evaluate: Callable[[torch.Tensor], tuple[float, float]] | None = None,
        on_update: Callable[[ServerState, AsyncReport], None] | None = None,
    ):
        self.hooks = Hooks(algorithm, "async")
        check_concurrency(settings.concurrency, data.num_clients)
        self.step = server_step(algorithm, self.hooks, settings.buffer_size, settings.concurrency, settings.weighting)
        self.algorithm, self.executor, self.data, self.server, self.store = algorithm, executor, data, server, store
        self.s, self.delays, self.evaluate, self.on_update = settings, delays, evaluate, on_update
        self.now = 0.0
        self.arrivals = 0
        self._wave = 0
        self._seq = 0
        self._queue: list[tuple[float, int, Job]] = []
        self._in_flight: set[int] = set()
        self.results: dict[int, ClientResult] = {}  # trained jobs in flight, by dispatch order
        self._lock = threading.Lock()
        self._clock = time.perf_counter()

    @property
    def started(self) -> bool:
        """Whether a wave was dispatched (or a snapshot restored)."""
        return self._seq > 0

    def snapshot(self) -> dict:
        """The loop's state between two arrival groups, as plain values
        (:mod:`fedtorch.federation.async_snapshot`); the server state and the client-state
        store are saved beside it by the caller."""
        jobs = [dataclasses.replace(j, broadcast=None) for _, _, j in sorted(self._queue, key=lambda e: e[:2])]
        return to_plain({
            "now": self.now, "arrivals": self.arrivals, "wave": self._wave, "seq": self._seq, "jobs": jobs,
            "results": [self.results[j.seq] for j in jobs], "buffer": self.step.pending,
        })

    def restore(self, snapshot: dict, server: ServerState) -> None:
        """Continue from a :meth:`snapshot` and the server state saved with it.

        Raises:
            ValueError: a job whose result is missing (every job in flight is trained at
                dispatch, so a snapshot taken between arrival groups has all of them), or a
                message class that cannot be imported.
        """
        s = from_plain(snapshot)
        if len(s["jobs"]) != len(s["results"]):
            raise ValueError(f"async snapshot: {len(s['jobs'])} jobs in flight but {len(s['results'])} results")
        self.server, self.now, self.arrivals, self._wave, self._seq = server, s["now"], s["arrivals"], s["wave"], s["seq"]
        self._queue = [(j.arrives_at, j.seq, j) for j in s["jobs"]]
        heapq.heapify(self._queue)
        self._in_flight = {j.client_id for j in s["jobs"]}
        self.results = {j.seq: r for j, r in zip(s["jobs"], s["results"])}
        self.step.pending = s["buffer"]

    @property
    def done(self) -> bool:
        """Whether the run has reached ``updates`` global-model versions."""
        return self.server.round >= self.s.updates

    def dispatch(self, now: float, queue: bool = True) -> list[Job]:
        """Fill the free slots with one wave of clients from the current model.

        Args:
            now: the dispatch time (seconds of the run's clock).
            queue: put the jobs on the simulated event queue at their simulated arrival
                time (the simulated and asyncio clocks); False for a caller that learns
                arrivals otherwise (the wall clock, :mod:`fedtorch.federation.wallclock_async`).

        Returns:
            The new jobs, in dispatch order (empty when done or no slot is free).
        """
        s, n = self.s, self.data.num_clients
        free = s.concurrency - len(self._in_flight)
        if self.done or free <= 0:
            return []
        perm = torch.randperm(n, generator=generator(s.seed, self._wave, "client_sampling")).tolist()
        clients = sorted([c for c in perm if c not in self._in_flight][:free])
        durations: dict[int, float] = {}

        def delay_aware_lr(c: int, k: int) -> float:
            durations[c] = self.delays.duration(s.seed, self._wave, c, k)
            return s.lr / (1 + s.lr_delay_alpha * durations[c]) if s.lr_delay_alpha else s.lr

        tasks = plan_tasks(self.hooks, self.data, self._wave, clients, s, delay_aware_lr)
        broadcast = self.algorithm.broadcast(self.server)
        states = self.store.get_many([t.ctx.client_id for t in tasks], lambda: self.algorithm.init_client(self.server.x))
        jobs = []
        for task, state in zip(tasks, states):
            c = task.ctx.client_id
            job = Job(self._seq, self._wave, self.server.round, now, now + durations[c], task, broadcast, state,
                      broadcast.nbytes)
            if queue:
                heapq.heappush(self._queue, (job.arrives_at, job.seq, job))
            self._in_flight.add(c)
            self._seq += 1
            jobs.append(job)
        self._wave += 1
        return jobs

    def train(self, jobs: list[Job]) -> list[ClientResult]:
        """Local training of jobs of one wave (one ``executor.run``); thread-safe."""
        if not jobs:
            return []
        with self._lock:
            results = self.executor.run(self.algorithm, jobs[0].broadcast, [j.task for j in jobs], [j.state for j in jobs])
        for j in jobs:
            j.broadcast = None
        return results

    def next_arrivals(self) -> list[Job]:
        """Pop every job arriving at the earliest pending time, in dispatch order.

        Returns:
            Empty when done, when nothing is in flight, or when the next arrival is later
            than ``max_seconds``.
        """
        if self.done or not self._queue:
            return []
        t = self._queue[0][0]
        if self.s.max_seconds is not None and t > self.s.max_seconds:
            return []
        group = []
        while self._queue and self._queue[0][0] == t:
            group.append(heapq.heappop(self._queue)[2])
        return group

    def arrive(self, job: Job, result: ClientResult) -> None:
        """Apply one arrival (nothing once done): staleness, server rule, log, evaluation."""
        if self.done:
            return
        self._in_flight.discard(job.client_id)
        self.now = job.arrives_at
        self.arrivals += 1
        message = result.message
        applied = bool(torch.isfinite(message.delta).all()) and math.isfinite(float(message.loss))
        staleness = self.server.round - job.version
        before = self.server.round
        if applied:
            self.server, stored = self.step.arrive(self.server, job.client_id, message, result.state, staleness)
            self.store.put_many([c for c, _ in stored], [st for _, st in stored])
        updated = self.server.round != before
        seconds = time.perf_counter() - self._clock
        test_loss = test_acc = None
        r = self.server.round
        if updated and self.evaluate is not None and (r % self.s.eval_every == 0 or r >= self.s.updates):
            with self._lock:  # the executor's replica may be training for an asyncio client task
                test_loss, test_acc = self.evaluate(self.hooks.eval_model(self.server))
        record = UpdateRecord(
            update=self.arrivals, client_id=job.client_id, wave=job.wave, dispatched_at=job.dispatched_at,
            arrived_at=job.arrives_at, version=job.version, staleness=staleness, num_steps=int(message.num_steps),
            loss=float(message.loss), lr=job.task.ctx.lr, applied=applied, server_version=r,
        )
        if self.on_update is not None:
            self.on_update(self.server, AsyncReport(record, result, updated, test_loss, test_acc, seconds,
                                                    job.bytes_down, message.nbytes))
        self._clock = time.perf_counter()


def run_async(core: AsyncServer, clock: str = "simulated", sleep_scale: float = 0.0,
              on_group: Callable[[AsyncServer], None] | None = None) -> AsyncServer:
    """Run an asynchronous federation to its end (see the module docstring).

    Args:
        core: a fresh :class:`AsyncServer` (algorithm, executor, data, settings, delays,
            callbacks), or one continued with :meth:`AsyncServer.restore` (simulated clock).
        clock: ``"simulated"`` (the event queue here) or ``"asyncio"`` (clients as asyncio
            tasks, :mod:`fedtorch.federation.asyncio_loop`); both give the same result.
            (``"wall"`` is :func:`fedtorch.federation.wallclock_async.run_wall_clock`'s.)
        sleep_scale: asyncio only: real seconds each client task sleeps per simulated second.
        on_group: simulated clock only: called after each group of arrivals, once the wave
            dispatched after it is trained: the moment a :meth:`AsyncServer.snapshot` is complete.

    Returns:
        ``core``, finished: ``.server`` the final state, ``.now`` the simulated time of the
        last arrival (seconds), ``.arrivals`` the arrivals applied.

    Raises:
        ValueError: an unknown clock or a negative sleep_scale (:func:`check_clock`), the
            wall clock, or the asyncio clock for a restored run.
    """
    check_clock(clock, sleep_scale)
    if clock == "wall":
        raise ValueError("clock='wall' runs across worker processes: use fedtorch.federation.wallclock_async.run_wall_clock")
    if clock == "asyncio":
        if core.started:
            raise ValueError("clock='asyncio' starts from wave 0; continue a restored run with the simulated clock")
        return asyncio.run(serve(core, sleep_scale))

    def train(jobs: list[Job]) -> None:
        core.results.update(zip((j.seq for j in jobs), core.train(jobs)))

    if not core.started:
        train(core.dispatch(0.0))
    while group := core.next_arrivals():
        for job in group:
            core.arrive(job, core.results.pop(job.seq))
        train(core.dispatch(group[0].arrives_at))
        if on_group is not None:
            on_group(core)
    return core
