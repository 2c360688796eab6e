"""The SecAgg / SecAgg+ server: routes messages and unmasks the sum (Bonawitz et al., Fig. 4).

Honest-but-curious: it follows the protocol and sees only public keys, ciphertexts of shares,
masked vectors (bytes), the shares revealed in unmasking and the sum. It never receives a
plain update, an unmasked vector or a client's secret, except the secrets the protocol
reconstructs: ``b_u`` for survivors, ``s_u^SK`` for clients that dropped after sharing.

Unmasking (Fig. 4, round 4, server side), with ``U_2`` = clients that shared keys and ``U_3``
= clients whose masked vector arrived:

    z = sum_{u in U_3} y_u - sum_{u in U_3} PRG(b_u)
        - sum_{u in U_2 \\ U_3} sum_{v in U_3 ∩ N(u)} Delta_{v,u} * PRG(s_{u,v})   (mod 2^bits)
"""

from __future__ import annotations

import torch

from fedtorch.secure_aggregation import crypto, shamir, wire
from fedtorch.secure_aggregation.client import Keys, mask_sign
from fedtorch.secure_aggregation.field import FieldQuantizer
from fedtorch.secure_aggregation.graph import Graph
from fedtorch.secure_aggregation.shamir import RecoveryError


class SecAggServer:
    """The server of one aggregation round; call the four round methods in order."""

    def __init__(self, graph: Graph, threshold: int, quantizer: FieldQuantizer, round: int):
        self.graph, self.t, self.q, self.round = graph, threshold, quantizer, round
        self.keys: dict[int, Keys] = {}
        self.shared: set[int] = set()  # U_2
        self.masked: dict[int, bytes] = {}  # U_3 -> y_u as received

    def _require(self, count: int, what: str) -> None:
        if count < self.t:
            raise RecoveryError(f"server aborts: {count} {what}, threshold t={self.t}")

    def advertise_keys(self, keys: dict[int, Keys]) -> dict[int, dict[int, Keys]]:
        """Collect ``U_1``'s keys; return, per client, the keys of its neighbours in ``U_1``."""
        self._require(len(keys), "clients advertised keys")
        self.keys = dict(keys)
        return {u: {v: keys[v] for v in self.graph[u] if v in keys} for u in keys}

    def share_keys(self, outboxes: dict[int, dict[int, bytes]]) -> dict[int, dict[int, bytes]]:
        """Collect ``U_2``'s ciphertexts; return each ``v in U_2`` its inbox ``u -> ciphertext``."""
        self._require(len(outboxes), "clients shared keys")
        self.shared = set(outboxes)
        inboxes: dict[int, dict[int, bytes]] = {v: {} for v in self.shared}
        for u, out in outboxes.items():
            for v, ct in out.items():
                if v in self.shared:
                    inboxes[v][u] = ct
        return inboxes

    def masked_input(self, masked: dict[int, bytes]) -> set[int]:
        """Collect the masked vectors of ``U_3``; return ``U_3`` (sent to the clients)."""
        self._require(len(masked), "clients sent masked input")
        self.masked = dict(masked)
        return set(masked)

    def unmask(self, replies: dict[int, bytes]) -> torch.Tensor:
        """Reconstruct the needed seeds from the revealed shares and return the field sum ``(P+1,)``.

        Raises:
            RecoveryError: fewer than t shares of a needed secret arrived, or a reconstructed
                ``s_u^SK`` does not match ``u``'s advertised public key.
        """
        b_shares: dict[int, list] = {}
        sk_shares: dict[int, list] = {}
        for records in replies.values():
            for owner, kind, idx, share in wire.unpack_reveal(records):
                (b_shares if kind == wire.KIND_B else sk_shares).setdefault(owner, []).append((idx, share))
        z = None
        for u in sorted(self.masked):
            y = wire.unpack_vector(self.masked[u], self.q.bits)
            z = y if z is None else self.q.add(z, y)
        for u in sorted(self.masked):
            b = shamir.combine(b_shares.get(u, []), self.t, f"self-mask seed b_{u} of surviving client {u}")
            z = self.q.sub(z, crypto.prg(b, z.numel(), self.q.bits))
        for u in sorted(self.shared - set(self.masked)):
            alive = [v for v in self.graph[u] if v in self.masked]
            if not alive:
                continue  # no survivor masked with u
            secret = shamir.combine(sk_shares.get(u, []), self.t, f"key s_{u}^SK of client {u} dropped after sharing")
            sk, pk = crypto.keypair(secret)
            if pk != self.keys[u][1]:
                raise RecoveryError(f"reconstructed s_{u}^SK does not match client {u}'s advertised key")
            for v in alive:
                seed = crypto.agree(sk, self.keys[v][1], crypto.pair_info("mask", self.round, u, v))
                p = crypto.prg(seed, z.numel(), self.q.bits)
                z = self.q.sub(z, p) if mask_sign(v, u) > 0 else self.q.add(z, p)
        return z
