"""Privacy accounting for DP-FedAvg and DP-SGD with Google's ``dp-accounting`` library.

Nothing here computes an epsilon itself: every number comes from ``dp_accounting`` (the
``privacy`` extra: ``pip install fedtorch[privacy]``). One round (or one DP-SGD step) is the
library event

* Poisson sampling with rate q (McMahan et al. ICLR 2018, Alg. 1; Abadi et al. CCS 2016)::

      PoissonSampledDpEvent(q, GaussianDpEvent(z))          neighbours: add/remove one

  accounted by ``RdpAccountant()`` (Mironov et al.'s RDP of the sampled Gaussian mechanism)
  or ``PLDAccountant()`` (privacy loss distributions, tighter), both with the library's
  default ``ADD_OR_REMOVE_ONE`` relation;
* fixed-size sampling, M of N without replacement::

      SampledWithoutReplacementDpEvent(N, M, GaussianDpEvent(z / 2))   neighbours: replace one

  accounted by ``RdpAccountant(neighboring_relation=REPLACE_ONE)`` (Wang, Balle,
  Kasiviswanathan, AISTATS 2019, Thm. 27, as the library implements it). The library's
  ``GaussianDpEvent`` noise multiplier is the noise std over the L2 sensitivity *under the
  chosen relation*; replacing one client's clipped update moves the sum by up to 2C, so the
  event gets ``z / 2``. The ``PLDAccountant`` does not support this event (dp-accounting
  0.6.0), so ``accountant="pld"`` with ``sampling="fixed"`` is refused. The two relations
  give epsilons of different definitions: do not compare Poisson and fixed-size numbers as
  if they measured the same thing.

``steps`` rounds compose as ``accountant.compose(event, steps)``; epsilon is
``accountant.get_epsilon(delta)``. With adaptive clipping (Andrew et al. 2021) the accounted
z is the *total* noise multiplier; :meth:`fedtorch.privacy.adaptive.AdaptiveClip.update_noise_multiplier`
derives the larger one the update is noised with.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from fedtorch.privacy._checks import check, check_rate, is_int, is_real
from fedtorch.privacy.gaussian import SAMPLINGS, expected_clients

ACCOUNTANTS = ("rdp", "pld")


# The calibration's lower bracket for fixed-size sampling: dp-accounting's sampled-without-
# replacement RDP divides by sigma^2 and fails at z = 0 (ZeroDivisionError), so the search
# starts just above it (no useful epsilon needs a smaller z). Poisson sampling keeps 0: the
# PLD accountant at a tiny z takes minutes to discretise.
MIN_NOISE_MULTIPLIER = 1e-2


def _library():
    try:
        import dp_accounting
    except ImportError as err:  # an optional dependency: say how to get it
        raise ImportError("privacy accounting needs the dp-accounting library: pip install 'fedtorch[privacy]'") from err
    # its RDP accountant logs a warning for every fractional order whose series does not
    # converge (it then leaves that order out, which only makes epsilon conservative)
    logging.getLogger("absl").setLevel(logging.ERROR)
    return dp_accounting


def _check(q, steps, delta, sampling, accountant, num_clients) -> None:
    check_rate(q)
    check(is_int(steps) and steps >= 0, "steps", steps, "an integer number of rounds >= 0")
    check(is_real(delta) and 0 < delta < 1, "delta", delta, "a probability in (0, 1)")
    check(sampling in SAMPLINGS, "sampling", sampling, f"one of {SAMPLINGS}")
    check(accountant in ACCOUNTANTS, "accountant", accountant, f"one of {ACCOUNTANTS}")
    check(not (sampling == "fixed" and accountant == "pld"), "accountant", accountant,
          "dp-accounting's PLDAccountant has no fixed-size (without replacement) event; use accountant='rdp' or sampling='poisson'")
    if sampling == "fixed":
        check(num_clients is not None, "num_clients", num_clients, "fixed-size sampling needs the population size N")
        expected_clients("fixed", num_clients, q)


def dp_event(noise_multiplier: float, q: float, sampling: str = "poisson", num_clients: int | None = None):
    """The ``dp_accounting`` event of one round (module docstring): Poisson or without replacement."""
    dp = _library()
    if sampling == "fixed":
        m = int(expected_clients("fixed", num_clients, q))
        return dp.SampledWithoutReplacementDpEvent(num_clients, m, dp.GaussianDpEvent(noise_multiplier / 2))
    return dp.PoissonSampledDpEvent(q, dp.GaussianDpEvent(noise_multiplier))


def make_accountant(accountant: str = "rdp", sampling: str = "poisson"):
    """A fresh ``RdpAccountant`` / ``PLDAccountant`` with the neighbouring relation ``sampling`` needs."""
    dp = _library()
    if accountant == "pld":
        return dp.pld.PLDAccountant()
    if sampling == "fixed":
        return dp.rdp.RdpAccountant(neighboring_relation=dp.NeighboringRelation.REPLACE_ONE)
    return dp.rdp.RdpAccountant()


def epsilon(noise_multiplier: float, sampling_rate: float, steps: int, delta: float, sampling: str = "poisson",
            accountant: str = "rdp", num_clients: int | None = None) -> float:
    """Epsilon at ``delta`` after ``steps`` rounds of the sampled Gaussian mechanism (the library's).

    Args:
        noise_multiplier: z >= 0, noise std over the clip norm C (0 gives ``inf``).
        sampling_rate: q in (0, 1]: Poisson rate, or M / N for fixed-size sampling.
        steps: rounds composed (>= 0; 0 gives 0.0).
        delta: target delta in (0, 1), e.g. below 1 / N.
        sampling: ``"poisson"`` or ``"fixed"`` (then ``num_clients`` = N and q N an integer).
        accountant: ``"rdp"`` or ``"pld"`` (``"pld"`` only with Poisson sampling).

    Returns:
        ``make_accountant(...).compose(dp_event(...), steps).get_epsilon(delta)`` as a float.

    Raises:
        ValueError: any parameter out of range (``privacy.<name>``), or an unsupported
            combination; ImportError without dp-accounting.
    """
    check(is_real(noise_multiplier) and 0 <= noise_multiplier < math.inf, "noise_multiplier", noise_multiplier,
          "a finite noise multiplier >= 0")
    _check(sampling_rate, steps, delta, sampling, accountant, num_clients)
    if steps == 0:
        return 0.0
    acc = make_accountant(accountant, sampling)
    acc.compose(dp_event(noise_multiplier, sampling_rate, sampling, num_clients), steps)
    return float(acc.get_epsilon(delta))


def noise_multiplier_for(target_epsilon: float, sampling_rate: float, steps: int, delta: float,
                         sampling: str = "poisson", accountant: str = "rdp", num_clients: int | None = None,
                         tol: float = 1e-4) -> float:
    """The smallest z (within ``tol``) whose :func:`epsilon` is <= ``target_epsilon``.

    ``dp_accounting.calibrate_dp_mechanism`` searches z (bracket from [0, 1] upwards, then
    Brent's method) and guarantees ``epsilon(result) <= target_epsilon``.

    Raises:
        ValueError: ``privacy.target_epsilon`` not > 0, ``privacy.steps`` < 1, or another
            parameter out of range (see :func:`epsilon`).
    """
    check(is_real(target_epsilon) and 0 < target_epsilon < math.inf, "target_epsilon", target_epsilon, "a finite epsilon > 0")
    check(is_real(tol) and tol > 0, "tol", tol, "a tolerance > 0")
    _check(sampling_rate, steps, delta, sampling, accountant, num_clients)
    check(steps >= 1, "steps", steps, "calibration needs at least one round")
    dp = _library()
    return float(dp.calibrate_dp_mechanism(
        lambda: make_accountant(accountant, sampling),
        lambda z: dp.SelfComposedDpEvent(dp_event(z, sampling_rate, sampling, num_clients), steps),
        target_epsilon, delta, dp.LowerEndpointAndGuess(MIN_NOISE_MULTIPLIER if sampling == "fixed" else 0.0, 1.0), tol=tol,
    ))


@dataclass(frozen=True)
class Accountant:
    """Counts the rounds of one DP run and reports its epsilon; server state ``{"steps": n}``.

    A round is counted whether or not any client came (an empty Poisson sample still
    releases noise). Parameters as :func:`epsilon`; they are fixed for the run (changing z
    mid-run would need a ``ComposedDpEvent`` of the different rounds, not supported here).

    Raises:
        ValueError: as :func:`epsilon`, at construction.
    """

    noise_multiplier: float
    sampling_rate: float
    delta: float
    sampling: str = "poisson"
    accountant: str = "rdp"
    num_clients: int | None = None

    def __post_init__(self) -> None:
        epsilon(self.noise_multiplier, self.sampling_rate, 0, self.delta, self.sampling, self.accountant, self.num_clients)

    def init_state(self) -> dict[str, torch.Tensor]:
        """``{"steps": 0}`` as a 0-dim int64 CPU tensor (it travels in the checkpoint)."""
        return {"steps": torch.tensor(0, dtype=torch.int64)}

    def step(self, state: dict[str, torch.Tensor], rounds: int = 1) -> dict[str, torch.Tensor]:
        """A new state with ``rounds`` more rounds counted.

        Raises:
            ValueError: a malformed state or ``rounds`` < 0.
        """
        check(is_int(rounds) and rounds >= 0, "rounds", rounds, "an integer >= 0")
        return {"steps": _steps(state) + rounds}

    def epsilon(self, state: dict[str, torch.Tensor]) -> float:
        """Epsilon at ``delta`` after the rounds ``state`` counts (:func:`epsilon`)."""
        return epsilon(self.noise_multiplier, self.sampling_rate, int(_steps(state)), self.delta, self.sampling,
                       self.accountant, self.num_clients)


def _steps(state) -> torch.Tensor:
    steps = state.get("steps") if isinstance(state, dict) else None
    if not (isinstance(steps, torch.Tensor) and steps.dim() == 0 and steps.dtype == torch.int64 and int(steps) >= 0):
        raise ValueError(f"state must be {{'steps': 0-dim int64 tensor >= 0}} (from init_state), got {state!r}")
    return steps
