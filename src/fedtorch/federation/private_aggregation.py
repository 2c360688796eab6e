"""DP-FedAvg in the synchronous loop (issue 16, item 2; the mechanism and the accounting are
:mod:`fedtorch.privacy`).

Each round the server receives the M sampled clients' updates, clips each to L2 norm C,
adds Gaussian noise N(0, (z C)^2 I) to their sum and divides by the fixed denominator M
(McMahan et al., ICLR 2018, Alg. 1, the fixed-size variant; :class:`fedtorch.privacy.DPFedAvg`).
Client weights do not enter (every client's contribution is bounded by C, which is what
the noise covers), whatever ``federation.weighting`` says. The algorithm then steps its
server optimiser on that one private mean: :meth:`PrivateAggregation.apply` hands it a
single message with weight 1, so only algorithms whose server step is a server optimiser on
the weighted mean of the deltas qualify (:func:`fedtorch.federation.server_rules.check_server_rule`). With adaptive clipping (Andrew et al., NeurIPS 2021) C follows a
private quantile of the update norms.

The noise comes from ``generator(seed, round, "dp_noise")``. The clip norm and the number of
rounds accounted live in ``ServerState.loop`` (``privacy.clip``, ``privacy.steps``), so
checkpoints carry them; epsilon at ``privacy.delta`` after each round is computed by
``dp-accounting`` (:class:`fedtorch.privacy.Accountant`) and reported in the metrics.

Sampling (``privacy.sampling``): ``fixed``, M of N drawn uniformly without replacement each
round (the loop's sampler), accounted as sampling without replacement (RDP, replace-one
neighbours); or ``poisson``, each client independently with probability q = M / N
(:class:`PoissonSampling`, add/remove-one neighbours), the sum divided by the expected q N,
and a round whose sample is empty still releases the noise (and is accounted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedtorch.protocol import ClientMessage, ServerState
from fedtorch.federation.server_rules import one_row
from fedtorch.seeding import generator

PREFIX = "privacy."


@dataclass(frozen=True)
class PoissonSampling:
    """The loop's sampler under ``privacy.sampling=poisson``: each of the N clients takes
    part independently with probability ``rate`` (:func:`fedtorch.privacy.poisson_sample`
    with ``generator(seed, round, "client_sampling")``), so a round may have none. Called as
    :func:`~fedtorch.federation.sampling.sample_clients` is (M unused).

    Attributes:
        rate: q in (0, 1].
    """

    rate: float

    def __call__(self, seed: int, round: int, num_clients: int, clients_per_round: int = 0) -> list[int]:
        """The round's sorted client ids (possibly none)."""
        from fedtorch.privacy import poisson_sample

        return poisson_sample(num_clients, self.rate, generator(seed, round, "client_sampling")).tolist()


@dataclass(frozen=True)
class PrivateAggregation:
    """The run's DP mechanism (``privacy.*``); ``mechanism`` None: no DP.

    Attributes:
        mechanism: a :class:`fedtorch.privacy.DPFedAvg`, or None.
        accountant: its :class:`fedtorch.privacy.Accountant`.
        seed: the training seed (noise generators).
    """

    mechanism: object | None = None
    accountant: object | None = None
    seed: int = 0

    def apply(self, server: ServerState, round: int, messages: ClientMessage, weights: torch.Tensor
              ) -> tuple[ServerState, ClientMessage, torch.Tensor, dict]:
        """``(server with the new clip norm and round count, the one-row private mean,
        its weight (1,), the round's privacy metrics)``; the inputs unchanged without DP.

        Raises:
            ValueError: a message type with fields beyond ``delta``.
        """
        if self.mechanism is None:
            return server, messages, weights, {}
        state = {"clip": server.loop[PREFIX + "clip"]} if PREFIX + "clip" in server.loop else self.mechanism.init_state()
        steps = {"steps": server.loop[PREFIX + "steps"]} if PREFIX + "steps" in server.loop else self.accountant.init_state()
        clip = float(state["clip"])
        out = self.mechanism.apply(messages.delta, state, generator(self.seed, round, "dp_noise",
                                                                     device=messages.delta.device))
        steps = self.accountant.step(steps)
        loop = {**server.loop, PREFIX + "clip": out.state["clip"], PREFIX + "steps": steps["steps"]}
        one, w = one_row(messages, weights, out.mean)
        metrics = {"epsilon": self.accountant.epsilon(steps), "clip_norm": clip}
        return server.replace(loop=loop), one, w, metrics
