"""Driver of one SecAgg / SecAgg+ aggregation: runs the four rounds between client objects and a
server object, passing only wire messages, and accounts bytes and seconds per round.

Rounds (Bonawitz et al. CCS 2017, Sec. 4, Fig. 4, semi-honest version; round 3
ConsistencyCheck is only needed against an active server and is not simulated):

0. ``advertise_keys``: each u in U_1 sends (c_u^PK, s_u^PK); the server forwards each
   client its neighbours' keys.
1. ``share_keys``: each u in U_2 Shamir-shares s_u^SK and b_u t-out-of-|N(u) ∩ U_1| + 1
   (u keeps one share), one AES-GCM ciphertext per neighbour, routed by the server.
2. ``masked_input``: each u in U_3 sends y_u (:mod:`.client`).
3. ``unmasking``: each v in U_4 reveals b-shares of survivors and s^SK-shares of clients that
   dropped after sharing; the server unmasks (:mod:`.server`).

Drop-outs (each a set of client indices; disjoint):

* ``dropped_before_sharing``: advertised keys, then left (in U_1, not U_2): simply excluded;
* ``dropped_after_masking``: shared keys and computed y_u, which never reached the server (in
  U_2, not U_3): excluded from the sum; the server removes its pairwise masks from the
  survivors' vectors by reconstructing s_u^SK from t shares;
* ``dropped_in_unmasking``: y_u arrived (u in U_3, its input counts) but u sends no shares.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from fedtorch.secure_aggregation.client import SecAggClient
from fedtorch.secure_aggregation.field import FieldQuantizer, check, plain_quantised_sum
from fedtorch.secure_aggregation.graph import Graph, complete_graph, harary_graph
from fedtorch.secure_aggregation.server import SecAggServer
from fedtorch.seeding import derive_seed

PHASES = ("advertise_keys", "share_keys", "masked_input", "unmasking")


@dataclass(frozen=True)
class SecAggStats:
    """Cost of one aggregation.

    Attributes:
        bytes_sent: phase -> ``(M,)`` int64, bytes client i uploaded in that round (public
            keys; share ciphertexts; the masked vector; revealed shares).
        bytes_received: phase -> ``(M,)`` int64, bytes the server sent client i (neighbours'
            keys; routed ciphertexts; nothing; the survivor list, 4 bytes per id).
        seconds: phase -> wall seconds of the simulated round (all clients + server, serial).
        survivors: ``U_3``, the clients whose input is in the sum.
        total_weight: ``sum_{u in U_3} w_u`` (decoded from the secure sum).
    """

    bytes_sent: dict[str, torch.Tensor]
    bytes_received: dict[str, torch.Tensor]
    seconds: dict[str, float]
    survivors: tuple[int, ...]
    total_weight: int


@dataclass(frozen=True)
class SecAggResult:
    """Everything :meth:`SecAggProtocol.transcript` returns: ``sum (P,) float64``, ``field_sum
    (P+1,) int64``, ``stats`` and ``server_view`` (u -> the masked vector bytes the server got)."""

    sum: torch.Tensor
    field_sum: torch.Tensor
    stats: SecAggStats
    server_view: dict[int, bytes] = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class SecAggProtocol:
    """Simulated secure aggregation of ``num_clients`` updates.

    Args:
        num_clients: M >= 2.
        threshold: Shamir threshold t in [1, degree + 1] (degree = M - 1, or ``neighbours``;
            each secret has degree + 1 holders: the client and its neighbours).
            Bonawitz et al. need t > M/2 (Sec. 4) for privacy against a server colluding with
            clients; it is not enforced here.
        bits, quant_bits, clip_range, stochastic: see :class:`FieldQuantizer`.
        neighbours: ``None`` for SecAgg (complete graph), or an even degree k for SecAgg+
            (random Harary graph, :func:`graph.harary_graph`).
        seed: derives all key material and the graph (with the round).

    Raises:
        ValueError: ``secagg.<name>=<value> is not allowed: <rule>``.
    """

    num_clients: int
    threshold: int
    bits: int = 32
    quant_bits: int = 16
    clip_range: float = 1.0
    neighbours: int | None = None
    stochastic: bool = False
    seed: int = 0

    def __post_init__(self):
        m = self.num_clients
        check(isinstance(m, int) and not isinstance(m, bool) and m >= 2, "num_clients", m, "an int >= 2")
        if self.neighbours is not None:
            harary_graph(m, self.neighbours, torch.Generator())  # validates k
        holders = m if self.neighbours is None else self.neighbours + 1
        t = self.threshold
        check(isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= holders, "threshold", t,
              f"an int in [1, {holders}] (a client and its neighbours hold the shares)")
        self.quantizer  # validates bits, quant_bits, clip_range, stochastic

    @property
    def quantizer(self) -> FieldQuantizer:
        """The public field / quantisation parameters."""
        return FieldQuantizer(bits=self.bits, quant_bits=self.quant_bits, clip_range=self.clip_range,
                              stochastic=self.stochastic)

    def graph(self, round: int = 0) -> Graph:
        """``neighbours[u]`` for this round (the relabelling is redrawn every round)."""
        if self.neighbours is None:
            return complete_graph(self.num_clients)
        gen = torch.Generator()
        gen.manual_seed(derive_seed(self.seed, round, "secagg_graph"))
        return harary_graph(self.num_clients, self.neighbours, gen)

    def run(self, updates: torch.Tensor, weights: Sequence[int] | torch.Tensor | None = None, *,
            dropped_after_masking=(), dropped_before_sharing=(), dropped_in_unmasking=(),
            gens: Sequence[torch.Generator] | None = None, round: int = 0) -> tuple[torch.Tensor, SecAggStats]:
        """Securely sum ``updates``; return ``(sum (P,) float64, stats)``.

        ``sum = step * sum_{u in U_3} w_u q_u``; divide by ``stats.total_weight`` for the mean.
        Equal to ``decode_sum(plain_sum(...))`` bit for bit. Arguments as in :meth:`transcript`.
        """
        res = self.transcript(updates, weights, dropped_after_masking=dropped_after_masking,
                              dropped_before_sharing=dropped_before_sharing,
                              dropped_in_unmasking=dropped_in_unmasking, gens=gens, round=round)
        return res.sum, res.stats

    def plain_sum(self, updates: torch.Tensor, weights=None, *, include: Sequence[int],
                  gens: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """The plain quantised field sum ``(P+1,)`` over ``include`` (no masks): the reference."""
        w = self._check(updates, weights, gens, [])
        return plain_quantised_sum(self.quantizer, updates, w, include, gens)

    def _check(self, updates, weights, gens, drops) -> list[int]:
        m = self.num_clients
        if not (isinstance(updates, torch.Tensor) and updates.dim() == 2 and updates.dtype == torch.float32
                and updates.shape[0] == m and updates.shape[1] >= 1):
            got = tuple(updates.shape) if isinstance(updates, torch.Tensor) else type(updates).__name__
            raise ValueError(f"updates must be a ({m}, P) float32 tensor, got {got}")
        w = [1] * m if weights is None else weights.tolist() if isinstance(weights, torch.Tensor) else list(weights)
        if len(w) != m or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in w):
            raise ValueError(f"weights must be {m} non-negative integers (e.g. sample counts), got {w!r}")
        if self.stochastic and (gens is None or len(gens) != m):
            raise ValueError(f"stochastic rounding needs gens: one torch.Generator per client ({m})")
        seen: set[int] = set()
        for name, s in drops:
            bad = [u for u in s if not (isinstance(u, int) and 0 <= u < m) or u in seen]
            if bad:
                raise ValueError(f"{name} has invalid or repeated client ids {bad}; allowed: distinct ids in [0, {m})")
            seen |= set(s)
        return w

    def transcript(self, updates: torch.Tensor, weights=None, *, dropped_after_masking=(),
                   dropped_before_sharing=(), dropped_in_unmasking=(), gens=None, round: int = 0) -> SecAggResult:
        """Run the four rounds and return the sum, the field sum, the stats and the server's view.

        Args:
            updates: ``(M, P)`` float32; row u is client u's update (seen only by client u).
            weights: ``M`` non-negative ints (default all 1), pre-multiplied by the clients.
            dropped_after_masking, dropped_before_sharing, dropped_in_unmasking: client-id
                sets, see the module docstring.
            gens: one ``torch.Generator`` per client for stochastic rounding (row u uses gens[u]).
            round: the round index; fresh keys, masks and graph every round.

        Raises:
            ValueError: bad shapes, weights, drop sets or generators.
            RecoveryError: fewer than t clients/shares survive where they are needed.
        """
        drops = [("dropped_after_masking", set(dropped_after_masking)),
                 ("dropped_before_sharing", set(dropped_before_sharing)),
                 ("dropped_in_unmasking", set(dropped_in_unmasking))]
        w = self._check(updates, weights, gens, drops)
        after, before, unmask_drop = (s for _, s in drops)
        m, q, graph = self.num_clients, self.quantizer, self.graph(round)
        q.check_capacity([w[u] for u in range(m) if u not in after | before])
        sent = {p: torch.zeros(m, dtype=torch.int64) for p in PHASES}
        recv = {p: torch.zeros(m, dtype=torch.int64) for p in PHASES}
        secs: dict[str, float] = {}
        tic = time.perf_counter()  # key generation counts in round 0
        clients = [SecAggClient(u, graph[u], self.threshold, q, self.seed, round) for u in range(m)]
        server = SecAggServer(graph, self.threshold, q, round)
        keys = {c.cid: c.advertise_keys() for c in clients}
        peer_keys = server.advertise_keys(keys)
        for u in keys:
            sent["advertise_keys"][u] = sum(map(len, keys[u]))
            recv["advertise_keys"][u] = sum(len(a) + len(b) for a, b in peer_keys[u].values())
        secs["advertise_keys"] = time.perf_counter() - tic

        tic = time.perf_counter()
        outboxes = {u: clients[u].share_keys(peer_keys[u]) for u in keys if u not in before}
        inboxes = server.share_keys(outboxes)
        for u, out in outboxes.items():
            sent["share_keys"][u] = sum(map(len, out.values()))
            recv["share_keys"][u] = sum(map(len, inboxes[u].values()))
        secs["share_keys"] = time.perf_counter() - tic

        tic = time.perf_counter()
        masked = {}
        for u in inboxes:
            y = clients[u].masked_input(updates[u], w[u], None if gens is None else gens[u], inboxes[u])
            if u not in after:  # a client in `after` computed y_u, which never arrived
                masked[u] = y
                sent["masked_input"][u] = len(y)
        survivors = server.masked_input(masked)
        secs["masked_input"] = time.perf_counter() - tic

        tic = time.perf_counter()
        replies = {}
        for u in sorted(survivors - unmask_drop):
            recv["unmasking"][u] = 4 * len(survivors)
            replies[u] = clients[u].unmask(survivors)
            sent["unmasking"][u] = len(replies[u])
        field_sum = server.unmask(replies)
        total, total_weight = q.decode_sum(field_sum)
        secs["unmasking"] = time.perf_counter() - tic

        stats = SecAggStats(sent, recv, secs, tuple(sorted(survivors)), total_weight)
        return SecAggResult(total, field_sum, stats, dict(server.masked))
