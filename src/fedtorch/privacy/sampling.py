"""Client sampling for DP-FedAvg: Poisson (McMahan et al. ICLR 2018, Algorithm 1, "select each
user independently with probability q") and fixed size (M of N without replacement).

The accounting depends on which one the loop used: Poisson sampling is accounted with
``PoissonSampledDpEvent`` (add/remove-one neighbours), fixed-size sampling with
``SampledWithoutReplacementDpEvent`` (replace-one neighbours, RDP only); see
:mod:`fedtorch.privacy.accounting`.

An empty Poisson sample (probability ``(1 - q)^N``) is a normal round: the loop trains
nobody, the server still releases ``noisy_mean`` of the ``(0, P)`` stack (pure noise over the
fixed denominator), applies it, and counts the round in the accountant. Skipping the round
instead would release the event "the sample was empty", which the accounting does not cover.
"""

from __future__ import annotations

import torch

from fedtorch.privacy._checks import check, check_generator, check_rate, is_int


def poisson_sample(num_clients: int, q: float, gen: torch.Generator) -> torch.Tensor:
    """The ids of the clients that joined: each of ``range(num_clients)`` independently with prob. q.

    Args:
        num_clients: N >= 1.
        q: the sampling rate in (0, 1].
        gen: a CPU ``torch.Generator`` (the loop derives it from (seed, round, "dp_sample")):
            N uniforms are drawn, so the result depends on nothing else.

    Returns:
        ``(K,)`` int64, sorted ascending, K ~ Binomial(N, q); may be empty (see the module
        docstring for what the loop does then).

    Raises:
        ValueError: ``privacy.num_clients`` < 1, ``privacy.sampling_rate`` outside (0, 1], or
            ``gen`` not a CPU generator.
    """
    check(is_int(num_clients) and num_clients >= 1, "num_clients", num_clients, "an integer >= 1")
    check_rate(q)
    check_generator(gen, torch.empty(0))
    return torch.nonzero(torch.rand(num_clients, generator=gen, dtype=torch.float64) < q).flatten()


def fixed_sample(num_clients: int, m: int, gen: torch.Generator) -> torch.Tensor:
    """M distinct client ids out of N, uniformly without replacement, sorted ascending.

    Raises:
        ValueError: ``privacy.num_clients`` < 1, M outside [1, N], or ``gen`` not a CPU generator.
    """
    check(is_int(num_clients) and num_clients >= 1, "num_clients", num_clients, "an integer >= 1")
    check(is_int(m) and 1 <= m <= num_clients, "clients_per_round", m, f"an integer in [1, {num_clients}]")
    check_generator(gen, torch.empty(0))
    return torch.randperm(num_clients, generator=gen)[:m].sort().values
