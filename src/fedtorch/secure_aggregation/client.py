"""A SecAgg / SecAgg+ client: the user side of Bonawitz et al. CCS 2017, Fig. 4 (semi-honest).

The client holds its plain update and secrets; everything it returns is what crosses the wire:
public keys, AES-GCM ciphertexts of shares, its masked vector as bytes, revealed shares. With
``Delta_{u,v} = +1`` if ``u > v`` else ``-1`` (Fig. 4, round 2), client u sends

    y_u = x_u + PRG(b_u) + sum_{v in U_2 ∩ N(u)} Delta_{u,v} * PRG(s_{u,v})   (mod 2^bits)

where ``x_u`` is its field encoding (:mod:`.field`), ``N(u)`` its neighbours (all other
clients for SecAgg, its graph neighbours for SecAgg+ / Bell et al. CCS 2020) and
``s_{u,v} = HKDF(X25519(s_u^SK, s_v^PK))``.
"""

from __future__ import annotations

import torch

from fedtorch.secure_aggregation import crypto, shamir, wire
from fedtorch.secure_aggregation.field import FieldQuantizer
from fedtorch.secure_aggregation.shamir import RecoveryError

Keys = tuple[bytes, bytes]  # (c_u^PK, s_u^PK), 32 bytes each


def mask_sign(u: int, v: int) -> int:
    """``Delta_{u,v}`` of Fig. 4: +1 when u > v, -1 when u < v, so the pair's masks cancel."""
    return 1 if u > v else -1


class SecAggClient:
    """Client ``cid`` for one aggregation round; call the four round methods in order.

    Args:
        cid: the client's index (its public identity, ``u``).
        neighbours: ``N(u)``, the sorted peers it masks with; its secrets are shared among them and itself.
        threshold: Shamir threshold ``t``.
        quantizer: the public field/quantisation parameters.
        seed, round: where its key material is derived from (:func:`crypto.material`).
    """

    def __init__(self, cid: int, neighbours: tuple[int, ...], threshold: int, quantizer: FieldQuantizer,
                 seed: int, round: int):
        self.cid, self.neighbours, self.t, self.q, self.round = cid, set(neighbours), threshold, quantizer, round
        self._c_sk, self._c_pk = crypto.keypair(crypto.material(seed, round, cid, "c"))
        self._s_sk, self._s_pk = crypto.keypair(crypto.material(seed, round, cid, "s"))
        self._b = crypto.material(seed, round, cid, "b", crypto.SEED_BYTES)
        self._peers: dict[int, Keys] = {}
        self._held: dict[int, tuple[int, bytes, bytes]] = {}  # owner -> (index, share of s^SK, share of b)

    def _require(self, count: int, what: str) -> None:
        if count < self.t:
            raise RecoveryError(f"client {self.cid} aborts: {count} {what}, threshold t={self.t}")

    # Round 0 (AdvertiseKeys)
    def advertise_keys(self) -> Keys:
        """Return ``(c_u^PK, s_u^PK)``; 64 bytes on the wire."""
        return self._c_pk, self._s_pk

    # Round 1 (ShareKeys)
    def share_keys(self, peer_keys: dict[int, Keys]) -> dict[int, bytes]:
        """Share ``s_u^SK`` and ``b_u`` t-out-of-(|peers| + 1) among u itself and its neighbours
        in ``U_1`` (Fig. 4, round 1: the shares go to all of ``U_1``, u included; u keeps its own).

        Args:
            peer_keys: ``v -> (c_v^PK, s_v^PK)`` for ``v in U_1 ∩ N(u)`` (from the server).

        Returns:
            ``v -> AES-GCM ciphertext`` of ``(u, v, index, share of s_u^SK, share of b_u)``.

        Raises:
            RecoveryError: fewer than t - 1 neighbours advertised keys.
        """
        self._peers = {v: k for v, k in peer_keys.items() if v in self.neighbours}
        self._require(len(self._peers) + 1, "holders (itself and neighbours that advertised keys)")
        holders = sorted([*self._peers, self.cid])
        sk_shares = shamir.split(crypto.private_bytes(self._s_sk), self.t, len(holders))
        b_shares = shamir.split(self._b, self.t, len(holders))
        out = {}
        for v, (idx, s_sk), (_, s_b) in zip(holders, sk_shares, b_shares):
            if v == self.cid:
                self._held[v] = (idx, s_sk, s_b)
                continue
            key = crypto.agree(self._c_sk, self._peers[v][0], crypto.pair_info("enc", self.round, self.cid, v))
            out[v] = crypto.seal(key, self.cid, v, wire.pack_share(self.cid, v, idx, s_sk, s_b))
        return out

    # Round 2 (MaskedInputCollection)
    def masked_input(self, update: torch.Tensor, weight: int, gen: torch.Generator | None,
                     inbox: dict[int, bytes]) -> bytes:
        """Store the shares received, and return the masked field vector ``y_u`` as bytes.

        Args:
            update: ``(P,)`` float32, the client's plain update (never leaves the client).
            weight: its non-negative integer aggregation weight.
            gen: its generator for stochastic rounding (or ``None``).
            inbox: ``v -> ciphertext`` from each ``v in U_2 ∩ N(u)`` (routed by the server).

        Raises:
            RecoveryError: fewer than t - 1 neighbours shared keys.
            ValueError: a decrypted share names the wrong sender/receiver (Fig. 4 check).
        """
        self._require(len(inbox) + 1, "holders (itself and neighbours that shared keys)")
        for v, ct in inbox.items():
            key = crypto.agree(self._c_sk, self._peers[v][0], crypto.pair_info("enc", self.round, v, self.cid))
            owner, holder, idx, s_sk, s_b = wire.unpack_share(crypto.open_sealed(key, v, self.cid, ct))
            if (owner, holder) != (v, self.cid):
                raise ValueError(f"client {self.cid}: share from {v} is labelled ({owner} -> {holder})")
            self._held[v] = (idx, s_sk, s_b)
        x = self.q.encode(update, weight, gen)
        y = self.q.add(x, crypto.prg(self._b, x.numel(), self.q.bits))
        for v in sorted(inbox):
            seed = crypto.agree(self._s_sk, self._peers[v][1], crypto.pair_info("mask", self.round, self.cid, v))
            p = crypto.prg(seed, x.numel(), self.q.bits)
            y = self.q.add(y, p) if mask_sign(self.cid, v) > 0 else self.q.sub(y, p)
        return wire.pack_vector(y, self.q.bits)

    # Round 3 (Unmasking; round 4 of Fig. 4, whose round 3 ConsistencyCheck is for active adversaries)
    def unmask(self, survivors: set[int]) -> bytes:
        """Reveal, for each owner whose shares it holds, b-shares if the owner is in ``U_3``,
        s^SK-shares if not: never both for one owner (which would unmask its input).

        Raises:
            RecoveryError: ``|U_3| < t``.
        """
        self._require(len(survivors), "clients sent masked input")
        records = []
        for owner, (idx, s_sk, s_b) in sorted(self._held.items()):
            if owner in survivors:
                records.append((owner, wire.KIND_B, idx, s_b))
            else:
                records.append((owner, wire.KIND_SK, idx, s_sk))
        return wire.pack_reveal(records)
