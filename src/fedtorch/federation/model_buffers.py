"""The model's buffers (BatchNorm running statistics) in a synchronous federation.

A model's persistent buffers b (``(Q,)``, :meth:`fedtorch.flat.FlatModule.read_buffers`) are not
parameters: no algorithm sees them, so every algorithm works unchanged with a BatchNorm
model. The federation loop moves them:

* the server's b (``ServerState.buffers``, from the initial model) goes down with each
  broadcast (``Broadcast.buffers``; counted in ``bytes_down``) and each client trains from
  it, its forward passes in training mode updating it on its own data;
* with ``model.local_buffers=true`` a client instead starts from its own b_i, kept in the
  client-state store under :data:`KEY` (from the global b at its first participation):
  the statistics half of FedBN (Li et al., ICLR 2021, "FedBN: Federated Learning on Non-IID
  Features via Local Batch Normalization"; the authors' ``communication`` in
  github.com/med-air/FedBN averages every ``state_dict`` entry except the BatchNorm layers',
  affine weights and statistics alike; checked). Here the affine weights are parameters
  and the algorithm aggregates them;
* after the round the server's b becomes the weighted mean sum_i p_i b_i of the aggregated
  clients' buffers with the round's aggregation weights p (``federation.weighting``), as
  FedAvg averages parameters, in both modes (a round with no valid client keeps b). The
  global test set is evaluated with that mean; per-client evaluation under
  ``model.local_buffers`` uses each client's own b_i (the global b for a client that never
  trained). ``num_batches_tracked`` is averaged too and rounded when loaded into a module.

A model without buffers (``server.buffers`` None) passes through untouched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from fedtorch.protocol import Broadcast, ClientResult, ClientTask, ServerState, State

KEY = "model.buffers"  # a client's own buffers in its stored state (model.local_buffers)


@dataclass(frozen=True)
class ModelBuffers:
    """The buffer rule of one run (module docstring).

    Attributes:
        local: ``model.local_buffers``: clients keep their own buffers.
    """

    local: bool = False

    def broadcast(self, broadcast: Broadcast, server: ServerState) -> Broadcast:
        """``broadcast`` with the server's buffers attached (unchanged without buffers)."""
        if server.buffers is None:
            return broadcast
        return dataclasses.replace(broadcast, buffers=server.buffers)

    def tasks(self, tasks: Sequence[ClientTask], own: Sequence[State]) -> list[ClientTask]:
        """The tasks with each client's own buffers from its loop-owned state ``own``
        (:func:`fedtorch.federation.uplink.split_state`) in local mode; else unchanged."""
        if not self.local:
            return list(tasks)
        return [dataclasses.replace(task, buffers=state.get(KEY)) for task, state in zip(tasks, own)]

    def aggregate(self, server: ServerState, results: Sequence[ClientResult], weights: torch.Tensor) -> ServerState:
        """``server`` with buffers sum_i p_i b_i over ``results`` (the aggregated clients,
        ``weights`` their ``(M,)`` p); unchanged without buffers or results.

        Raises:
            ValueError: a result without buffers when the server has them.
        """
        if server.buffers is None or not results:
            return server
        if any(r.buffers is None for r in results):
            raise ValueError("the model has buffers but a client result carries none")
        stacked = torch.stack([r.buffers.to(server.buffers.device) for r in results])
        p = weights.to(device=stacked.device, dtype=stacked.dtype).unsqueeze(1)
        return server.replace(buffers=(p * stacked).sum(dim=0))

    def state(self, own: State, result: ClientResult) -> State:
        """The loop-owned state to store for ``result``'s client: ``own``, with its new
        buffers under :data:`KEY` in local mode (on the CPU, where the store keeps states)."""
        if not self.local or result.buffers is None:
            return own
        return {**own, KEY: result.buffers.detach().cpu()}

    def of_client(self, state: State | None, server: ServerState) -> torch.Tensor | None:
        """The buffers client-level evaluation uses: the client's own (local mode, once it
        trained), else the server's."""
        if self.local and state is not None and KEY in state:
            return state[KEY]
        return server.buffers
