"""Accounting of local DP-SGD in the synchronous loop (issue 16, item 2; the mechanism is
:class:`fedtorch.privacy.LocalDPSGD`, the numbers are Google's ``dp-accounting``).

Example-level privacy is per client: client i's data has been touched by every local step
it took, each one Poisson-sampled Gaussian mechanism on its lot::

    PoissonSampledDpEvent(q_i, GaussianDpEvent(sigma / sqrt(m)))   q_i = min(1, B / n_i)

(m = gradients per step on the same lot, :mod:`fedtorch.privacy.local_dpsgd`). After S_i
such steps client i's epsilon at ``delta`` is :func:`fedtorch.privacy.epsilon` of
``(sigma / sqrt(m), q_i, S_i)``; a round reports the largest over all clients so far
(``local_epsilon``, the guarantee that holds for every client's data) and the mean over those
that have trained. S_i counts the planned steps ``task.ctx.num_steps`` of every task handed
to the executor, whether or not its update was aggregated (its noise was released); early
stopping only shortens a client's work, so the count is an upper bound. The counts and the
per-client epsilons live in ``ServerState.loop`` (``local_dp.steps``, ``local_dp.epsilon``,
both ``(N,)``), so checkpoints carry them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from fedtorch.protocol import ServerState

PREFIX = "local_dp."


@functools.lru_cache(maxsize=4096)
def _epsilon(z: float, q: float, steps: int, delta: float, accountant: str) -> float:
    from fedtorch.privacy import epsilon

    return epsilon(z, q, steps, delta, "poisson", accountant)


@dataclass(frozen=True)
class LocalPrivacy:
    """The run's local DP-SGD accounting; ``source`` None: off.

    Attributes:
        source: the executors' :class:`fedtorch.privacy.LocalDPSGD`, or None.
        rates: ``(N,)`` float64, each client's lot rate q_i.
        delta: the delta of (epsilon, delta).
        accountant: ``"rdp"`` or ``"pld"``.
    """

    source: object | None = None
    rates: torch.Tensor | None = None
    delta: float = 1e-5
    accountant: str = "rdp"

    def account(self, server: ServerState, tasks) -> tuple[ServerState, dict]:
        """``(server with the round's steps counted, {"local_epsilon": max_i eps_i,
        "local_epsilon_mean": mean over clients with S_i > 0})``; unchanged and ``{}`` when off."""
        if self.source is None:
            return server, {}
        n = self.rates.numel()
        steps = server.loop.get(PREFIX + "steps", torch.zeros(n, dtype=torch.int64)).clone()
        eps = server.loop.get(PREFIX + "epsilon", torch.zeros(n, dtype=torch.float64)).clone()
        z = self.source.noise_multiplier / math.sqrt(self.source.queries_per_step)
        for task in tasks:
            c = task.ctx.client_id
            steps[c] += task.ctx.num_steps
            eps[c] = _epsilon(z, float(self.rates[c]), int(steps[c]), self.delta, self.accountant)
        trained = steps > 0
        metrics = {"local_epsilon": float(eps.max()),
                   "local_epsilon_mean": float(eps[trained].mean()) if bool(trained.any()) else 0.0}
        return server.replace(loop={**server.loop, PREFIX + "steps": steps, PREFIX + "epsilon": eps}), metrics
