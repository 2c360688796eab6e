"""Secure aggregation in the synchronous loop (issue 16, item 3; the protocol simulation is
:mod:`fedtorch.secure_aggregation`).

Each round the aggregated clients quantise their updates to the field Z_{2^bits} (clipped to
``[-secagg.clip_range, secagg.clip_range]``, ``secagg.quant_bits`` of resolution), multiply
them by their integer weight (n_i under ``federation.weighting=samples``, 1 under
``uniform``) and run SecAgg (Bonawitz et al. CCS 2017) or, with ``secagg.neighbours=k``,
SecAgg+ (Bell et al. CCS 2020) with the server; the server learns only the sum and the total
weight, and steps the algorithm's server optimiser on ``sum / total weight`` (one message,
weight 1, as robust aggregation and DP-FedAvg do; the same algorithm check applies).
``secagg.dropout`` of the round's clients drop after sending their masked input (drawn from
``(seed, round, "secagg_dropout")``): their input leaves the sum, and the survivors'
shares remove their masks. ``secagg.masked=false`` computes the same quantised sum in the
clear (the reference a SecAgg run must equal bit for bit). The protocol's cost (bytes each
client sent, seconds per phase) goes into the round's metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedtorch.protocol import ClientMessage, ServerState
from fedtorch.federation.server_rules import one_row
from fedtorch.seeding import derive_seed, generator


@dataclass(frozen=True)
class SecureSum:
    """The run's secure aggregation (``secagg.*``); ``enabled`` False: none.

    Attributes:
        enabled: run secure aggregation.
        masked: run the protocol (True) or sum the same quantised values in the clear.
        bits, quant_bits, clip_range, neighbours, stochastic: the protocol's field and
            graph (:class:`fedtorch.secure_aggregation.SecAggProtocol`).
        threshold: Shamir threshold as a fraction of each secret's holders (t = ceil(fraction
            x holders), at least 1).
        dropout: fraction of the round's clients dropping after masking.
        samples: weight clients by n_i (else 1).
        seed: the training seed.
    """

    enabled: bool = False
    masked: bool = True
    bits: int = 32
    quant_bits: int = 16
    clip_range: float = 1.0
    neighbours: int | None = None
    stochastic: bool = False
    threshold: float = 0.6
    dropout: float = 0.0
    samples: bool = True
    seed: int = 0

    def protocol(self, num_clients: int):
        """The :class:`~fedtorch.secure_aggregation.SecAggProtocol` of a cohort of M clients.

        Raises:
            ValueError: ``secagg.*`` out of range for M (``secagg.<key>`` named).
        """
        from fedtorch.secure_aggregation import SecAggProtocol

        holders = num_clients if self.neighbours is None else self.neighbours + 1
        t = max(1, math.ceil(self.threshold * holders))
        return SecAggProtocol(num_clients=num_clients, threshold=t, bits=self.bits, quant_bits=self.quant_bits,
                              clip_range=self.clip_range, neighbours=self.neighbours, stochastic=self.stochastic,
                              seed=derive_seed(self.seed, "secagg"))

    def apply(self, server: ServerState, round: int, clients: list[int], messages: ClientMessage,
              weights: torch.Tensor) -> tuple[ServerState, ClientMessage, torch.Tensor, dict]:
        """``(server, the one-row mean of the secure sum, its weight (1,), the round's cost)``;
        the inputs unchanged when disabled.

        Raises:
            ValueError: a message type with fields beyond ``delta``, or parameters out of range.
            fedtorch.secure_aggregation.RecoveryError: too many clients dropped to recover.
        """
        if not self.enabled:
            return server, messages, weights, {}
        m = len(clients)
        proto = self.protocol(m)
        w = [int(n) for n in messages.num_samples.tolist()] if self.samples else [1] * m
        order = torch.randperm(m, generator=generator(self.seed, round, "secagg_dropout")).tolist()
        dropped = set(order[: math.floor(self.dropout * m + 1e-9)])
        updates = messages.delta.detach().float().cpu().contiguous()
        gens = [generator(self.seed, round, c, "secagg") for c in clients] if self.stochastic else None
        metrics = {}
        if self.masked:
            total, stats = proto.run(updates, w, dropped_after_masking=dropped, gens=gens, round=round)
            weight = stats.total_weight
            metrics = {"secagg_seconds": round_(sum(stats.seconds.values())),
                       "secagg_bytes_up": int(sum(int(v.sum()) for v in stats.bytes_sent.values()))}
        else:
            survivors = [u for u in range(m) if u not in dropped]
            total, weight = proto.quantizer.decode_sum(proto.plain_sum(updates, w, include=survivors, gens=gens))
        one, w1 = one_row(messages, weights, (total / weight))
        return server, one, w1, metrics

def round_(seconds: float) -> float:
    """Seconds to the microsecond, as the metrics rows keep times."""
    return round(seconds, 6)
