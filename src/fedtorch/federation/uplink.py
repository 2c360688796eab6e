"""What crosses the wire on the way up: compression of each client's update in the
synchronous loop (issue 16; the compressors are :mod:`fedtorch.compression`).

After local training and the finite check, the loop hands the aggregated clients' updates
``delta (M, P)`` to :meth:`Uplink.apply`, which returns what the server reconstructs (the
decoded ``(M, P)``), each client's new transform state and the bytes each message takes on
the wire. The algorithm's ``aggregate`` then sees the decoded deltas, as a real server
would; every other message field (SCAFFOLD's control-variate update, ...) is sent as is.

* Per-client state (error-feedback residuals, DGC's momentum) lives in the client-state
  store beside the algorithm's, under keys ``compression.<name>`` (the algorithm never sees
  them, :func:`split_state`), so checkpoints, resume and disk spilling carry it; a client's
  first participation starts from the compressor's zero state.
* Randomness (QSGD's stochastic rounding) comes from ``generator(seed, round, client,
  "compression")``, so every executor, and a resumed run, sends the same messages.
* A client whose update is left out (non-finite) keeps its state.
* ``bytes_up`` counts the encoded form of ``delta`` (the compressor's ``nbytes``, equal to
  the serialised payload) plus the other message fields as they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from fedtorch.federation.model_buffers import KEY as BUFFERS_KEY
from fedtorch.protocol import ClientMessage, State
from fedtorch.seeding import generator

PREFIX = "compression."
LOOP_PREFIXES = (BUFFERS_KEY, PREFIX)  # client-state keys the federation loop owns


def split_state(state: State) -> tuple[State, State]:
    """``(the algorithm's part, the loop's part)`` of a stored client state (new dicts)."""
    mine = {k: v for k, v in state.items() if k.startswith(LOOP_PREFIXES)}
    return {k: v for k, v in state.items() if k not in mine}, mine


@dataclass(frozen=True)
class Uplink:
    """The uplink transform of a run: a compressor of :data:`fedtorch.compression.COMPRESSORS`
    (None: messages go up as they are, and the loop does not call :meth:`apply`).

    Attributes:
        compressor: the compressor object, or None.
        seed: the training seed (for the per-client generators).
    """

    compressor: object | None = None
    seed: int = 0

    def apply(self, round: int, clients: Sequence[int], messages: ClientMessage, states: Sequence[State]
              ) -> tuple[ClientMessage, list[State], list[int]]:
        """Compress the stacked ``messages`` (``delta (M, P)``) of ``clients``.

        Args:
            round: the 0-based round.
            clients: the M client ids, in row order.
            messages: the stacked messages of the aggregated clients.
            states: each client's loop-owned state (:func:`split_state`; may lack the keys).

        Returns:
            ``(messages with the decoded delta, new loop-owned states, bytes of each
            client's delta on the wire)``.
        """
        delta, comp = messages.delta, self.compressor
        zero = comp.init_state(1, delta.shape[1])
        state = {k: torch.stack([s.get(PREFIX + k, zero[k][0]).to(delta.device) for s in states]) for k in zero}
        gens = [generator(self.seed, round, c, "compression") for c in clients]
        decoded, new, nbytes = comp.compress(delta.float().contiguous(), state, gens, round)
        out = dataclasses.replace(messages, delta=decoded.to(delta.dtype))
        new_states = [{**dict(s), **{PREFIX + k: v[i].cpu().clone() for k, v in new.items()}} for i, s in enumerate(states)]
        return out, new_states, [int(b) for b in nbytes.tolist()]
