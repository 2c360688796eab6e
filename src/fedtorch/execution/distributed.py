"""The distributed executor: a round's clients spread over torchrun processes.

``execution.mode=distributed`` under ``torchrun`` (docs/distributed.md). Every rank builds
this executor (same data, same split, same model); rank 0 runs the federation loop with
it, the other ranks call :meth:`DistributedExecutor.serve` and train what rank 0 sends.

One round (:meth:`DistributedExecutor.run`, on rank 0):

1. the tasks are assigned to the training ranks (rank 0 too unless
   ``execution.server_trains=false``) by :func:`assign`: longest local work first
   (``ctx.num_steps``), each to the least-loaded rank;
2. each worker rank with tasks gets one message: a header (round contexts, field names,
   shapes and dtypes) and one flat payload (the broadcast, each task's sample indices and
   buffers, each client's persistent state; :mod:`fedtorch.execution.distributed_wire`);
3. rank 0 trains its own share with its local executor while the workers train theirs
   with theirs (``execution.worker_mode``: serial, parallel or vectorized, unchanged);
4. rank 0 receives the results rank by rank and returns them in task order.

Client state travels with the task: rank 0's client-state store is the only one, so a
checkpoint holds every state and resuming is unchanged (docs/distributed.md says why).
Samples never cross the wire: a task carries the indices of its samples in the training
tensors every rank loaded itself.

Determinism: a client's result depends only on (broadcast, task, state) and its seeded
generators; the wire moves raw bytes. So a client trained on any rank gives the bits the
serial executor gives, when the intra-op thread counts are equal (``execution.threads``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import torch

from fedtorch.execution.distributed_wire import Link, PeerError, Traffic, pack
from fedtorch.protocol import Broadcast, ClientResult, ClientTask, State

STOP, RUN, RESULTS, FAILED = "stop", "run", "results", "failed"


def assign(steps: Sequence[int], ranks: Sequence[int]) -> dict[int, list[int]]:
    """Greedy longest-processing-time assignment of tasks to ranks.

    Tasks in decreasing ``steps`` (ties: lower task index first) each go to the rank with
    the least assigned steps so far (ties: the rank listed first).

    Args:
        steps: K_i of each task.
        ranks: the training ranks, in tie-break order.

    Returns:
        rank -> the indices of its tasks, ascending (every rank present, maybe empty).

    Raises:
        ValueError: no rank to train on.
    """
    if not ranks:
        raise ValueError("no rank trains clients: set execution.server_trains=true or start more processes")
    load = {r: 0 for r in ranks}
    out: dict[int, list[int]] = {r: [] for r in ranks}
    for i in sorted(range(len(steps)), key=lambda i: (-int(steps[i]), i)):
        r = min(ranks, key=lambda r: load[r])  # min keeps the first of equal loads
        out[r].append(i)
        load[r] += int(steps[i])
    return {r: sorted(v) for r, v in out.items()}


class DistributedExecutor:
    """Rank 0's executor over torch.distributed, and the workers' serving loop.

    Args:
        local: this rank's own executor (``execution.worker_mode``); it also evaluates and
            gives :attr:`replica` on rank 0.
        rank, world_size: this process's rank and the number of processes.
        control, data: peer rank -> the pair's gloo group (headers) and payload group
            (``Session.control`` and ``Session.data`` of :mod:`fedtorch.execution.distributed_setup`;
            ``data`` empty: payloads on ``control``).
        server_trains: rank 0 trains a share of the clients too.
        timeout_s: ``execution.timeout_s``: rank 0 waits that long for a worker, a worker
            twice as long for rank 0.

    Attributes:
        traffic: one :class:`~fedtorch.execution.distributed_wire.Traffic` per distributed
            round on rank 0 (bytes down/up per rank, transfer seconds).
    """

    name = "distributed"

    def __init__(self, local, rank: int, world_size: int, *, control: dict, data: dict | None = None,
                 server_trains: bool = True, timeout_s: float = 300.0):
        self.local = local
        self.rank, self.world_size = rank, world_size
        self.server_trains = server_trains
        self.replica, self.device, self.threads = local.replica, local.device, local.threads
        wire_device = local.device if local.device.type == "cuda" else torch.device("cpu")
        peers = range(1, world_size) if rank == 0 else [0]
        patience = 1 if rank == 0 else 2  # a worker outwaits rank 0 (distributed_wire.Link)
        data = data or {}
        self.links = {p: Link(rank, p, control[p], data.get(p, control[p]), wire_device, timeout_s, patience) for p in peers}
        self.algorithm = None  # rank 0: the run's algorithm (bind); another object runs locally
        self.traffic: list[Traffic] = []
        self._pending: set[int] = set()  # workers whose results are still to be received
        self._dead: set[int] = set()
        self._stopped = False
        who = "rank 0 and " if server_trains else ""
        self.description = (f"distributed over {world_size} processes ({who}{world_size - 1} worker rank(s)), "
                            f"each: {local.description}")

    def bind(self, algorithm) -> None:
        """Rank 0: the algorithm whose rounds are spread over the ranks (the workers built
        the same one); ``run`` with any other object (per-client personalisation's
        fine-tuning) trains on rank 0 alone."""
        self.algorithm = algorithm

    @property
    def training_ranks(self) -> list[int]:
        return ([0] if self.server_trains else []) + list(range(1, self.world_size))

    def run(self, algorithm, broadcast: Broadcast, tasks: Sequence[ClientTask], states: Sequence[State]) -> list[ClientResult]:
        """Local training of ``tasks`` over the ranks (module docstring).

        Returns:
            One :class:`ClientResult` per task, in task order; messages and buffers on
            :attr:`device`, states on the CPU.

        Raises:
            PeerError: a worker timed out, crashed, or its training raised (the message
                names the rank).
        """
        if algorithm is not self.algorithm or not tasks:
            return self.local.run(algorithm, broadcast, tasks, states)
        plan = assign([t.ctx.num_steps for t in tasks], self.training_ranks)
        traffic = Traffic(round=tasks[0].ctx.round, clients={r: len(v) for r, v in plan.items()})
        start = time.perf_counter()
        for r in range(1, self.world_size):
            if plan[r]:
                traffic.down[r] = self._send_work(r, broadcast, [tasks[i] for i in plan[r]], [states[i] for i in plan[r]])
        traffic.down_seconds = time.perf_counter() - start
        results: list[ClientResult | None] = [None] * len(tasks)
        own = plan.get(0, [])
        if own:
            for i, res in zip(own, self.local.run(algorithm, broadcast, [tasks[i] for i in own], [states[i] for i in own])):
                results[i] = res
        start = time.perf_counter()
        for r in range(1, self.world_size):
            if plan[r]:
                got, traffic.up[r], seconds = self._receive_results(r)
                traffic.up_seconds += seconds
                for i, res in zip(plan[r], got):
                    results[i] = res
        traffic.wait_seconds = time.perf_counter() - start - traffic.up_seconds
        self.traffic.append(traffic)
        return results

    def _send_work(self, r: int, broadcast: Broadcast, tasks: list[ClientTask], states: list[State]) -> int:
        tensors = {("x",): broadcast.x, **{("extra", k): v for k, v in broadcast.extra.items()}}
        if broadcast.buffers is not None:
            tensors[("buffers",)] = broadcast.buffers
        for j, (task, state) in enumerate(zip(tasks, states)):
            tensors[("indices", j)] = task.indices
            if task.buffers is not None:
                tensors[("task_buffers", j)] = task.buffers
            tensors.update({("state", j, k): v for k, v in state.items()})
        spec, payload = pack(tensors, self.links[r].device)
        header = {"op": RUN, "contexts": [t.ctx for t in tasks], "spec": spec}
        self._pending.add(r)
        return self._guard(r, lambda: self.links[r].send(header, payload))

    def _receive_results(self, r: int) -> tuple[list[ClientResult], int, float]:
        header, tensors, nbytes, seconds = self._guard(r, lambda: self.links[r].receive())
        self._pending.discard(r)
        if header["op"] == FAILED:
            raise PeerError(r, f"rank {r} failed: its local training raised {header['error']}")
        return [_result(meta, j, tensors, self.device) for j, meta in enumerate(header["results"])], nbytes, seconds

    def _guard(self, r: int, call):
        try:
            return call()
        except PeerError:
            self._dead.add(r)
            self._pending.discard(r)
            raise

    def serve(self, algorithm) -> int:
        """Worker ranks: train what rank 0 sends until it sends a stop; returns the stop's
        exit code (0 after a finished run, 1 when rank 0 stopped on an error).

        A client whose training raises is reported to rank 0 (which stops the run with the
        error naming this rank); this rank then waits for the stop.

        Raises:
            PeerError: rank 0 sent nothing within 2 x ``execution.timeout_s``, or is gone.
        """
        link = self.links[0]
        while True:
            header, tensors, _, _ = link.receive(copy=False)
            if header["op"] == STOP:
                return int(header["code"])
            broadcast, tasks, states = _work(header, tensors, self.local.device)
            try:
                results = self.local.run(algorithm, broadcast, tasks, states)
            except Exception as e:  # reported to rank 0, which stops the run naming this rank
                link.send({"op": FAILED, "error": f"{type(e).__name__}: {e}"})
                continue
            link.send(*_results_message(results, link.device))

    def stop(self, code: int = 0) -> None:
        """Rank 0, at the end of the run or on its error path: collect results still owed
        (an error mid-round), then tell every live worker to stop with exit ``code``.
        Idempotent; never raises for a worker that is already gone."""
        if self.rank != 0 or self._stopped:
            return
        self._stopped = True
        for r in range(1, self.world_size):
            try:
                if r in self._pending:
                    self._receive_results(r)
            except PeerError:  # a FAILED report leaves the worker alive, waiting for the stop
                pass
            if r not in self._dead:
                try:
                    self.links[r].send({"op": STOP, "code": code})
                except PeerError:
                    pass

    def close(self) -> None:
        """Release the local executor (the runner calls it; the workers stop in :meth:`stop`)."""
        self.local.close()

    def evaluate(self, x, inputs, targets, buffers=None):
        """Evaluation on rank 0 with the local executor (see ``Executor.evaluate``)."""
        return self.local.evaluate(x, inputs, targets, buffers)


def _work(header: dict, tensors: dict, device: torch.device) -> tuple[Broadcast, list[ClientTask], list[State]]:
    """A worker's view of a RUN message: the broadcast, its tasks and their states."""
    contexts = header["contexts"]
    extra = {key[1]: t for key, t in tensors.items() if key[0] == "extra"}
    broadcast = Broadcast(x=tensors[("x",)].to(device), extra={k: v.to(device) for k, v in extra.items()},
                          buffers=None if ("buffers",) not in tensors else tensors[("buffers",)].to(device))
    states: list[State] = [{} for _ in contexts]
    for key, t in tensors.items():
        if key[0] == "state":
            states[key[1]][key[2]] = t
    tasks = [ClientTask(ctx, tensors[("indices", j)], tensors.get(("task_buffers", j))) for j, ctx in enumerate(contexts)]
    return broadcast, tasks, states


def _results_message(results: list[ClientResult], device: torch.device) -> tuple[dict, torch.Tensor]:
    """A worker's RESULTS header and payload: message tensor fields, states, buffers."""
    tensors, metas = {}, []
    for j, res in enumerate(results):
        fields = {f.name: getattr(res.message, f.name) for f in dataclasses.fields(res.message)}
        plain = {k: v for k, v in fields.items() if not isinstance(v, torch.Tensor)}
        tensors.update({("message", j, k): v for k, v in fields.items() if k not in plain})
        tensors.update({("state", j, k): v for k, v in res.state.items()})
        if res.buffers is not None:
            tensors[("buffers", j)] = res.buffers
        metas.append({"client_id": res.client_id, "cls": type(res.message), "plain": plain, "seconds": res.seconds})
    spec, payload = pack(tensors, device)
    return {"op": RESULTS, "results": metas, "spec": spec}, payload


def _result(meta: dict, j: int, tensors: dict, device: torch.device) -> ClientResult:
    """Result ``j`` of a RESULTS message, rebuilt on rank 0 (message on ``device``, state on the CPU)."""
    fields = {key[2]: t.to(device) for key, t in tensors.items() if key[0] == "message" and key[1] == j}
    state = {key[2]: t.cpu() for key, t in tensors.items() if key[0] == "state" and key[1] == j}
    buffers = tensors.get(("buffers", j))
    message = meta["cls"](**fields, **meta["plain"])
    return ClientResult(meta["client_id"], message, state, meta["seconds"], None if buffers is None else buffers.to(device))
