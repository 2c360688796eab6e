"""The Gaussian mechanism of DP-FedAvg at the server (McMahan, Ramage, Talwar, Zhang, ICLR
2018, "Learning Differentially Private Recurrent Language Models", Algorithm 1)::

    Delta = ( sum_{k in C^t} pi(Delta_k, S)  +  N(0, (z S)^2 I) ) / W_hat

with ``S`` = C the clip norm (every ``pi(Delta_k, S)`` has norm <= C, so the sum has L2
sensitivity C when one client is added or removed), ``z`` = sigma the noise multiplier, and
the *fixed* denominator ``W_hat``: the expected number of clients, not the number that came
(the paper's estimator ``f~_f`` with ``W_hat = q W``; uniform weights ``w_k = 1`` give
``W_hat = q N``). A fixed denominator keeps the sensitivity of the mean at ``C / W_hat``
whatever the sample size; dividing by the realised count would leak it.
Sampling: Poisson with rate q (``W_hat = q N``, the paper's setting) or fixed size M of N
without replacement (``W_hat = M``); see :func:`expected_clients`.

Weights: the mechanism is the paper's unweighted sum (``w_k = 1``). Data-size weights
would change the sensitivity (the paper caps them, ``w_k = min(n_k / w_hat, 1)``); the loop
must not apply its usual FedAvg weights on top of this mean.
"""

from __future__ import annotations

import math

import torch

from fedtorch.privacy._checks import check, check_clip, check_generator, check_rate, check_sigma, check_stack, is_int, is_real

SAMPLINGS = ("poisson", "fixed")
NORM_SLACK = 1e-5  # relative: a row of `clipped` may exceed C by this much (float rounding), no more


def expected_clients(sampling: str, num_clients: int, sampling_rate: float) -> float:
    """The fixed denominator ``W_hat`` of DP-FedAvg: ``q * N`` (Poisson) or ``M = q * N`` (fixed).

    Args:
        sampling: ``"poisson"`` (each of the N clients joins with probability q) or
            ``"fixed"`` (M = q N clients without replacement; q N must be an integer).
        num_clients: N >= 1, the population size.
        sampling_rate: q in (0, 1].

    Raises:
        ValueError: ``privacy.sampling`` unknown, ``privacy.num_clients`` < 1,
            ``privacy.sampling_rate`` outside (0, 1], or q N not an integer for ``"fixed"``.
    """
    check(sampling in SAMPLINGS, "sampling", sampling, f"one of {SAMPLINGS}")
    check(is_int(num_clients) and num_clients >= 1, "num_clients", num_clients, "an integer >= 1")
    check_rate(sampling_rate)
    expected = sampling_rate * num_clients
    if sampling == "fixed":
        check(abs(expected - round(expected)) < 1e-9 * num_clients and round(expected) >= 1, "sampling_rate",
              sampling_rate, f"fixed-size sampling needs q*N = {expected!r} to be a whole number of clients >= 1")
        return float(round(expected))
    return expected


def noisy_mean(clipped: torch.Tensor, sigma: float, clip: float, denominator: float, gen: torch.Generator) -> torch.Tensor:
    """``(sum_i clipped[i] + N(0, (sigma C)^2 I)) / denominator`` (McMahan et al. 2018, Alg. 1).

    Args:
        clipped: ``(M, P)`` floating tensor whose rows have L2 norm <= C (the output of
            :func:`fedtorch.privacy.clipping.clip_updates`); M = 0 (an empty Poisson sample)
            gives pure noise, which is what the mechanism must release in that case.
        sigma: the noise multiplier z >= 0 (noise std ``sigma * C`` on the sum).
        clip: C, the clip norm the rows were clipped to (``math.inf`` only with sigma = 0).
        denominator: ``W_hat`` > 0, the expected number of clients (:func:`expected_clients`).
        gen: the server's noise generator (on ``clipped``'s device); P standard normals are
            drawn from it on every call, also when sigma = 0, so that the generator's state
            does not depend on sigma.

    Returns:
        ``(P,)`` in ``clipped``'s dtype. Sum, noise and division are in float64, rounded once.
        Deterministic for identical inputs and generator state.

    Raises:
        ValueError: ``privacy.noise_multiplier`` < 0 or sigma > 0 with C = inf,
            ``privacy.clip`` not > 0, a denominator not > 0, a row of norm > C (1 + 1e-5),
            non-finite rows, or ``gen`` not a generator on the tensor's device.
    """
    check_clip(clip)
    check_sigma(sigma, clip)
    check(is_real(denominator) and 0 < denominator < math.inf, "denominator", denominator, "a finite expected client count > 0")
    _, p = check_stack(clipped)
    check_generator(gen, clipped)
    wide = clipped.double()
    worst = float(torch.linalg.vector_norm(wide, dim=1).max()) if clipped.shape[0] else 0.0
    if worst > clip * (1 + NORM_SLACK):
        raise ValueError(f"a row of clipped has L2 norm {worst!r} > C={clip!r}: clip the updates first (clip_updates)")
    noise = torch.randn(p, generator=gen, dtype=torch.float64, device=clipped.device)
    std = sigma * clip if sigma > 0 else 0.0
    return ((wide.sum(dim=0) + std * noise) / denominator).to(clipped.dtype)
