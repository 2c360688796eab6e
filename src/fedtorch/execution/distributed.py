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

import time
from typing import Sequence

import torch

from fedtorch.edge_sums import EdgeRound, cat_rows
from fedtorch.execution.distributed_edges import EdgePart, edge_part, part_fields, part_from
from fedtorch.execution.distributed_wire import (FAILED, RUN, STOP, Link, PeerError, Traffic, pack, rebuild_result,
                                                 results_message, work_of)
from fedtorch.protocol import Broadcast, ClientResult, ClientTask, State


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
            twice as long for rank 0 (with edges: rank 0 twice for a leader, a leader once
            for a member, a worker three times for rank 0 or its leader).
        edges: the edges' training ranks, leader first (``Session.edges``); ``[]``: none.

    Attributes:
        traffic: one :class:`~fedtorch.execution.distributed_wire.Traffic` per distributed
            round on rank 0 (bytes down/up per rank, transfer seconds).
    """

    name = "distributed"

    def __init__(self, local, rank: int, world_size: int, *, control: dict, data: dict | None = None,
                 server_trains: bool = True, timeout_s: float = 300.0, edges: list | None = None):
        self.local = local
        self.rank, self.world_size = rank, world_size
        self.server_trains = server_trains
        self.edges = [list(e) for e in edges or []]
        self.leader = {r: e[0] for e in self.edges for r in e}
        self.replica, self.device, self.threads = local.replica, local.device, local.threads
        wire_device = local.device if local.device.type == "cuda" else torch.device("cpu")
        data = data or {}
        self.links = {p: Link(rank, p, g, data.get(p, g), wire_device, timeout_s, self._patience(p)) for p, g in control.items()}
        self.algorithm = None  # rank 0: the run's algorithm (bind); another object runs locally
        self.traffic: list[Traffic] = []
        self._pending: set[int] = set()  # workers whose results are still to be received
        self._dead: set[int] = set()
        self._stopped = False
        who = "rank 0 and " if server_trains else ""
        tiers = f", {len(self.edges)} edge(s) {self.edges}" if self.edges else ""
        self.description = (f"distributed over {world_size} processes ({who}{world_size - 1} worker rank(s){tiers}), "
                            f"each: {local.description}")

    def _patience(self, peer: int) -> int:
        """How many ``timeout_s`` this rank waits for ``peer`` (module docstring of
        :mod:`fedtorch.execution.distributed_wire`): whoever waits on a rank that may
        itself be waiting waits longer."""
        if not self.edges:
            return 1 if self.rank == 0 else 2
        if self.rank == 0:
            return 2 if self.leader.get(peer) == peer else 1  # a leader may wait timeout_s on a member
        return 1 if self.leader.get(peer) == self.rank else 3  # a leader waits once for its member

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
        if self.edges:  # the edges forward every message
            return self._edge_round(algorithm, broadcast, tasks, states, None)[0]
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

    def run_edges(self, algorithm, broadcast: Broadcast, tasks: Sequence[ClientTask], states: Sequence[State],
                  weights) -> EdgeRound:
        """Local training of ``tasks`` whose edges send partial weighted sums
        (:mod:`fedtorch.edge_sums`; the loop calls it for an edge-reducible round).

        Args:
            weights: ``(M,)`` the tasks' un-normalised weights w_i (n_i or 1).

        Returns:
            The :class:`~fedtorch.edge_sums.EdgeRound`: light results in task order, the
            edge rows in edge order (on :attr:`device`), the valid tasks, upload bytes.

        Raises:
            ValueError: no edges are configured.
            PeerError: as :meth:`run`.
        """
        if not self.edges:
            raise ValueError("run_edges needs execution.edges > 0")
        if not tasks:
            return EdgeRound([], None, torch.zeros(0, dtype=torch.bool), [])
        results, parts = self._edge_round(algorithm, broadcast, tasks, states, [float(w) for w in weights])
        valid, upload = [False] * len(tasks), [0] * len(tasks)
        for order, part in parts:
            for i, ok, b in zip(order, part.valid, part.upload):
                valid[i], upload[i] = ok, b
        rows = [part.row for _, part in parts if part.row is not None]
        return EdgeRound(results, cat_rows(rows) if rows else None, torch.tensor(valid), upload)

    def _edge_round(self, algorithm, broadcast, tasks, states, weights) -> tuple[list[ClientResult], list]:
        """One round over the edges (:mod:`fedtorch.execution.distributed_edges`): every
        rank gets its tasks from rank 0, members report to their leader, leaders to rank 0.
        ``weights`` None: the edges forward. Returns ``(results in task order, [(task
        indices of an edge, its EdgePart)])``."""
        plan = assign([t.ctx.num_steps for t in tasks], self.training_ranks)
        traffic = Traffic(round=tasks[0].ctx.round, clients={r: len(v) for r, v in plan.items()})
        start = time.perf_counter()
        for edge in self.edges:
            leader, members = edge[0], [m for m in edge[1:] if plan[m]]
            for r in edge:
                if r == 0 or not (plan[r] or (r == leader and members)):
                    continue
                route = {"members": members} if r == leader else {"report_to": leader}
                w = None if weights is None else [weights[i] for i in plan[r]]
                traffic.down[r] = self._send_work(r, broadcast, [tasks[i] for i in plan[r]], [states[i] for i in plan[r]],
                                                  {**route, "weights": w}, pending=leader in (r, 0))
        traffic.down_seconds = time.perf_counter() - start
        own = plan.get(0, [])
        mine = self.local.run(algorithm, broadcast, [tasks[i] for i in own], [states[i] for i in own]) if own else []
        start, parts = time.perf_counter(), []
        for edge in self.edges:
            leader = edge[0]
            order = [i for r in edge for i in plan[r]]
            if not order:
                continue
            if leader == 0:  # rank 0 leads this edge: it gathers the members itself
                got = list(mine)
                for m in edge[1:]:
                    if plan[m]:
                        more, traffic.up[m], seconds = self._receive_results(m)
                        got += more
                        traffic.up_seconds += seconds
                part = edge_part(got, None if weights is None else [weights[i] for i in order])
            else:
                part, traffic.up[leader], seconds = self._receive_part(leader)
                traffic.up_seconds += seconds
            parts.append((order, part))
        traffic.wait_seconds = time.perf_counter() - start - traffic.up_seconds
        self.traffic.append(traffic)
        results: list[ClientResult | None] = [None] * len(tasks)
        for order, part in parts:
            for i, res in zip(order, part.results):
                results[i] = res
        return results, parts

    def _receive_part(self, r: int) -> tuple[EdgePart, int, float]:
        header, tensors, nbytes, seconds = self._guard(r, lambda: self.links[r].receive())
        self._pending.discard(r)
        if header["op"] == FAILED:
            failed = header.get("rank", r)
            if header.get("dead"):
                self._dead.add(failed)
            raise PeerError(failed, header.get("message") or f"rank {r} failed: its local training raised {header['error']}")
        results = [rebuild_result(meta, j, tensors, self.device) for j, meta in enumerate(header["results"])]
        return part_from(header, tensors, results, self.device), nbytes, seconds

    def _send_work(self, r: int, broadcast: Broadcast, tasks: list[ClientTask], states: list[State],
                   route: dict | None = None, pending: bool = True) -> int:
        tensors = {("x",): broadcast.x, **{("extra", k): v for k, v in broadcast.extra.items()}}
        if broadcast.buffers is not None:
            tensors[("buffers",)] = broadcast.buffers
        for j, (task, state) in enumerate(zip(tasks, states)):
            tensors[("indices", j)] = task.indices
            if task.buffers is not None:
                tensors[("task_buffers", j)] = task.buffers
            tensors.update({("state", j, k): v for k, v in state.items()})
        spec, payload = pack(tensors, self.links[r].device)
        header = {"op": RUN, "contexts": [t.ctx for t in tasks], "spec": spec, **(route or {})}
        if pending:  # rank 0 receives this rank's answer (an edge member answers its leader)
            self._pending.add(r)
        return self._guard(r, lambda: self.links[r].send(header, payload))

    def _receive_results(self, r: int) -> tuple[list[ClientResult], int, float]:
        header, tensors, nbytes, seconds = self._guard(r, lambda: self.links[r].receive())
        self._pending.discard(r)
        if header["op"] == FAILED:
            raise PeerError(r, f"rank {r} failed: its local training raised {header['error']}")
        return [rebuild_result(meta, j, tensors, self.device) for j, meta in enumerate(header["results"])], nbytes, seconds

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
        error naming this rank); this rank then waits for the stop. An edge member whose
        leader does not take its results also waits for the stop: rank 0 names the leader.

        Raises:
            PeerError: rank 0 sent nothing within 2 x ``execution.timeout_s``, or is gone.
        """
        link = self.links[0]
        while True:
            header, tensors, _, _ = link.receive(copy=False)
            if header["op"] == STOP:
                return int(header["code"])
            broadcast, tasks, states = work_of(header, tensors, self.local.device)
            failure, results = None, []
            try:
                results = self.local.run(algorithm, broadcast, tasks, states) if tasks else []
            except Exception as e:  # reported to rank 0, which stops the run naming this rank
                failure = {"op": FAILED, "error": f"{type(e).__name__}: {e}", "rank": self.rank,
                           "message": f"rank {self.rank} failed: its local training raised {type(e).__name__}: {e}"}
            if "members" in header:  # an edge leader: its members' results first, whatever happened here
                failure, results, weights = self._gather(header, failure, results)
                if failure is None:
                    part = edge_part(results, weights)
                    head, payload = results_message(part.results, link.device, *part_fields(part))
                    link.send(head, payload)
                    continue
            target = self.links[header.get("report_to", 0)]
            try:
                if failure is not None:
                    target.send(failure)
                else:
                    head, payload = results_message(results, target.device)
                    target.send({**head, "weights": header.get("weights")}, payload)
            except PeerError:
                if target is link:
                    raise
                # an edge member whose leader is gone: rank 0, which waits on that leader, names it
                # and sends this rank the stop (one error line for the run, not one per member)

    def _gather(self, header: dict, failure: dict | None, results: list) -> tuple[dict | None, list, list | None]:
        """An edge leader: every member's results after its own (or the first failure)."""
        results, weights = list(results), header.get("weights")
        weights = None if weights is None else list(weights)
        for m in header["members"]:
            try:
                head, tensors, _, _ = self.links[m].receive()
            except PeerError as e:
                failure = failure or {"op": FAILED, "error": str(e), "rank": m, "message": str(e), "dead": True}
                continue
            if head["op"] == FAILED:
                failure = failure or head
                continue
            results += [rebuild_result(meta, j, tensors, self.device) for j, meta in enumerate(head["results"])]
            if weights is not None:
                weights += head["weights"]
        return failure, results, weights

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
