"""Adaptive clipping to a private quantile of the update norms (Andrew, Thakkar, McMahan,
Ramaswamy, NeurIPS 2021, "Differentially Private Learning with Adaptive Clipping",
arXiv:1905.03871), geometric update::

    b_i   = 1[ ||Delta_i|| <= C ]                                   (client i was not clipped)
    b_bar = ( sum_i (b_i - 1/2) + N(0, sigma_b^2) ) / W_hat + 1/2,  clamped to [0, 1]
    C    <- C * exp( -eta_C (b_bar - gamma) )

``gamma`` is the target unclipped quantile (the paper recommends 0.5, the median),
``eta_C`` the learning rate (0.2 recommended), ``sigma_b`` the std of the noise on the count
(``W_hat / 20`` recommended) and ``W_hat`` the expected number of clients per round. C rises
while fewer than a fraction gamma of the clients are unclipped and falls otherwise: it is an
online estimate of the gamma-quantile of the norms (a stochastic gradient step on the pinball
loss, in log space).

The bits are centred (``b_i - 1/2``) so that one client moves the count by at most 1/2: the
count query has sensitivity 1/2 and its effective noise multiplier is ``2 sigma_b``. The
update's Gaussian mechanism (noise multiplier ``z_Delta``) and the count's compose, per round,
to one Gaussian mechanism with noise multiplier ``z`` where (the paper's joint analysis)::

    z^-2 = z_Delta^-2 + (2 sigma_b)^-2,   i.e.   z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)

so the accountant is given ``z`` and the update is noised with ``z_Delta`` > z
(:meth:`AdaptiveClip.update_noise_multiplier`). Checked against the authors' production code
(TensorFlow Federated ``aggregators/differential_privacy.py``, ``adaptive_clip_noise_params``:
the same formula, the same check ``z < 2 sigma_b``; TensorFlow Privacy / TFF
``QuantileEstimatorQuery``: bits shifted to +-1/2, sum noised with ``sigma_b``, divided by the
expected record count, shifted back, clamped to [0, 1], ``C * exp(-eta (b_bar - gamma))``).
The paper's theorem number and its exact typography were not checked (its text was not
reachable from here); the formula above is the one both codebases implement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedtorch.privacy._checks import check, check_clip, check_generator, is_real


@dataclass(frozen=True)
class AdaptiveClip:
    """The geometric quantile tracker of Andrew et al. (2021); server state ``{"clip": C}``.

    Args:
        target_quantile: gamma in [0, 1], the fraction of clients meant to stay unclipped.
        learning_rate: eta_C >= 0 (C changes by a factor of at most ``exp(eta_C)`` a round).
        count_stddev: sigma_b >= 0, std of the Gaussian noise on the (centred) unclipped
            count, in clients; 0 makes the count non-private.

    Raises:
        ValueError: ``privacy.target_quantile``, ``privacy.clip_learning_rate`` or
            ``privacy.clipped_count_stddev`` out of range.
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float = 0.0

    def __post_init__(self) -> None:
        check(is_real(self.target_quantile) and 0 <= self.target_quantile <= 1, "target_quantile",
              self.target_quantile, "a fraction in [0, 1]")
        check(is_real(self.learning_rate) and 0 <= self.learning_rate < math.inf, "clip_learning_rate",
              self.learning_rate, "a finite rate >= 0")
        check(is_real(self.count_stddev) and 0 <= self.count_stddev < math.inf, "clipped_count_stddev",
              self.count_stddev, "a finite std >= 0 (in clients)")

    def init_state(self, clip: float) -> dict[str, torch.Tensor]:
        """``{"clip": C0}`` as a 0-dim float64 CPU tensor (it travels in the checkpoint).

        Raises:
            ValueError: ``privacy.clip`` not a finite number > 0.
        """
        check_clip(clip)
        check(clip < math.inf, "clip", clip, "adaptive clipping needs a finite initial clip norm")
        return {"clip": torch.tensor(float(clip), dtype=torch.float64)}

    def update_noise_multiplier(self, noise_multiplier: float) -> float:
        """``z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``: the update's noise multiplier for a total z.

        ``z = 0`` gives 0 (no privacy). With ``sigma_b = 0`` the count is released exactly,
        which no finite z covers.

        Raises:
            ValueError: ``privacy.clipped_count_stddev`` too small: ``z >= 2 sigma_b``.
        """
        check(is_real(noise_multiplier) and 0 <= noise_multiplier < math.inf, "noise_multiplier",
              noise_multiplier, "a finite noise multiplier >= 0")
        if noise_multiplier == 0:
            return 0.0
        check(noise_multiplier < 2 * self.count_stddev, "clipped_count_stddev", self.count_stddev,
              f"must exceed noise_multiplier / 2 = {noise_multiplier / 2!r} (z_Delta = (z^-2 - (2 sigma_b)^-2)^-1/2)")
        return (noise_multiplier ** -2 - (2 * self.count_stddev) ** -2) ** -0.5

    def apply(self, state: dict[str, torch.Tensor], norms: torch.Tensor, expected_clients: float,
              gen: torch.Generator) -> tuple[dict[str, torch.Tensor], float]:
        """One round: the noisy unclipped fraction ``b_bar`` and the next clip norm.

        Args:
            state: ``{"clip": C}`` (0-dim float64), the clip norm this round's updates were
                clipped to.
            norms: ``(M,)`` the updates' L2 norms before clipping (``ClipOut.norms``); M may be 0.
            expected_clients: ``W_hat`` > 0, the same fixed denominator as the update's mean.
            gen: the server's noise generator; one standard normal is drawn (also when
                sigma_b = 0).

        Returns:
            ``({"clip": C'}, b_bar)``, a new state dict and b_bar as a float.

        Raises:
            ValueError: a malformed state, ``norms`` not 1-D, or a bad denominator/generator.
        """
        clip = state.get("clip") if isinstance(state, dict) else None
        if not (isinstance(clip, torch.Tensor) and clip.dim() == 0 and clip.dtype == torch.float64):
            raise ValueError(f"state must be {{'clip': 0-dim float64 tensor}} (from init_state), got {state!r}")
        if not (isinstance(norms, torch.Tensor) and norms.dim() == 1):
            raise ValueError(f"norms must be a (M,) tensor, got {getattr(norms, 'shape', type(norms).__name__)}")
        check(is_real(expected_clients) and 0 < expected_clients < math.inf, "denominator", expected_clients,
              "a finite expected client count > 0")
        check_generator(gen)
        noise = float(torch.randn((), generator=gen, dtype=torch.float64, device=gen.device))
        centred = float(((norms.double().cpu() <= clip).double() - 0.5).sum())
        b_bar = min(1.0, max(0.0, (centred + self.count_stddev * noise) / expected_clients + 0.5))
        new_clip = clip * math.exp(-self.learning_rate * (b_bar - self.target_quantile))
        return {"clip": new_clip}, b_bar
