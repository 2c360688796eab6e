"""Byzantine clients and robust aggregation in the synchronous loop (issue 16, item 4; the
rules and attacks are :mod:`fedtorch.robust`).

**Attacks.** A fixed set of clients, ``floor(attack.fraction * N)`` of them drawn once from
``(seed, "attackers")`` (:func:`fedtorch.robust.attackers`), is malicious for the whole run.
An update attack (sign flip, scaling, Gaussian noise) replaces what such a client sends,
after its honest local training and before the server's finite check and the uplink
compression: :meth:`Attack.poison`, with the Gaussian draw from ``generator(seed, round,
client, "attack")``. The label-flip attack is a data attack: the malicious clients' training
labels become ``C - 1 - y`` before any executor is built (:meth:`Attack.poison_labels`;
the clients' index sets are disjoint, so no honest client is touched).

**Robust aggregation.** The server replaces the weighted mean of the round's updates by a
robust aggregate r (``(P,)``): :meth:`RobustAggregation.apply` hands the algorithm a single
message ``delta = r`` with weight 1, so ``aggregate`` steps its server optimiser on r. That
is meaningful only for an algorithm whose server step *is* a server optimiser on the
weighted mean of the deltas and whose messages carry nothing else (FedAvg, FedAvgM, FedAdam,
FedYogi, FedAdagrad, FedProx, FedSAM, ...); :func:`check_robust` refuses the others at
start-up. Server state of a rule (centred clipping's centre) lives in ``ServerState.loop``
under ``robust.<name>``, so checkpoints carry it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch

from fedtorch.protocol import ClientMessage, ServerState
from fedtorch.robust import attackers as draw_attackers
from fedtorch.robust import poison
from fedtorch.federation.server_rules import check_server_rule, one_row
from fedtorch.seeding import generator

STATE_PREFIX = "robust."


@dataclass(frozen=True)
class Attack:
    """The run's simulated attack (``attack.*``); ``attack`` None: every client is honest.

    Attributes:
        attack: an attack of :data:`fedtorch.robust.ATTACKS`, or None.
        malicious: the malicious client ids.
        seed: the training seed (Gaussian attack draws).
    """

    attack: object | None = None
    malicious: frozenset = field(default_factory=frozenset)
    seed: int = 0

    @staticmethod
    def build(attack, num_clients: int, fraction: float, seed: int) -> "Attack":
        """The attack with its malicious clients drawn from ``(seed, "attackers")``."""
        if attack is None:
            return Attack()
        return Attack(attack, frozenset(draw_attackers(num_clients, fraction, seed).tolist()), seed)

    def poison_labels(self, train_y: torch.Tensor, client_indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """The training labels with the malicious clients' flipped (label-flip attack), a new
        tensor; ``train_y`` itself for any other attack.

        Args:
            train_y: ``(N,)`` int64 training labels.
            client_indices: per client, its ``(n_i,)`` sample indices.
        """
        if self.attack is None or getattr(self.attack, "target", None) != "data":
            return train_y
        out = train_y.clone()
        for c in sorted(self.malicious):
            idx = client_indices[c].to(out.device)
            out[idx] = self.attack.apply_labels(out[idx])
        return out

    def poison(self, round: int, clients: Sequence[int], messages: ClientMessage) -> ClientMessage:
        """The stacked ``messages`` with the malicious clients' ``delta`` rows replaced
        (update attacks); unchanged otherwise."""
        if self.attack is None or getattr(self.attack, "target", None) != "update":
            return messages
        bad = torch.tensor([c in self.malicious for c in clients], dtype=torch.bool)
        if not bool(bad.any()):
            return messages
        gens = [generator(self.seed, round, c, "attack") if b else None for c, b in zip(clients, bad.tolist())]
        delta = poison(messages.delta, bad.to(messages.delta.device), self.attack, gens)
        return dataclasses.replace(messages, delta=delta)


@dataclass(frozen=True)
class RobustAggregation:
    """The server's robust rule (``robust.aggregator``); ``aggregator`` None: the algorithm
    aggregates the messages itself."""

    aggregator: object | None = None

    def apply(self, server: ServerState, messages: ClientMessage, weights: torch.Tensor
              ) -> tuple[ServerState, ClientMessage, torch.Tensor]:
        """``(server with the rule's new state, the one-row message of the robust aggregate,
        its weight (1,))``; the inputs unchanged without a rule.

        Raises:
            ValueError: the round has fewer valid clients than the rule needs (e.g. Krum:
                M > 2f + 2), or a message type with fields beyond ``delta``.
        """
        if self.aggregator is None:
            return server, messages, weights
        name = STATE_PREFIX + type(self.aggregator).__name__
        state = {k[len(name) + 1:]: v for k, v in server.loop.items() if k.startswith(name + ".")}
        if not state:
            state = self.aggregator.init_state(messages.delta.shape[1], messages.delta.dtype)
        out = self.aggregator.apply(messages.delta, weights, {k: v.to(messages.delta.device) for k, v in state.items()})
        loop = {**{k: v for k, v in server.loop.items() if not k.startswith(name + ".")},
                **{f"{name}.{k}": v for k, v in out.state.items()}}
        one, w = one_row(messages, weights, out.value)
        return server.replace(loop=loop), one, w


def check_robust(aggregator, algorithm, clients_per_round: int) -> None:
    """Start-up check of ``robust.aggregator`` for ``algorithm`` and a cohort of M clients.

    Raises:
        ValueError: :func:`check_server_rule`, or M too small for the rule.
    """
    if aggregator is None:
        return
    check_server_rule(algorithm)
    aggregator.check_cohort(clients_per_round)
