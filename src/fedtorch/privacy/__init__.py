"""Differential privacy for federated learning: message transforms that know nothing of algorithms.

* :func:`clip_updates` -- per-client L2 clipping (McMahan et al. ICLR 2018, Alg. 1).
* :func:`noisy_mean` -- the Gaussian mechanism on the sum, fixed denominator (same paper).
* :func:`poisson_sample` / :func:`fixed_sample` -- client sampling for DP.
* :class:`AdaptiveClip` -- clip norm tracking a private quantile (Andrew et al. NeurIPS 2021).
* :func:`epsilon`, :func:`noise_multiplier_for`, :class:`Accountant` -- accounting by Google's
  ``dp-accounting`` (RDP or PLD), never by our own formulas.
* :func:`dp_sgd_gradient` -- local DP-SGD with per-sample clipping (Abadi et al. CCS 2016, Alg. 1).
* :class:`LocalDPSGD` -- local DP-SGD as an executor's gradient source (Poisson lots, noisy clipped gradients).
* :class:`DPFedAvg` -- the server-side pieces in order.

State is explicit: ``{"clip": C}`` (adaptive clipping) and ``{"steps": n}`` (accountant) are
0-dim CPU tensors passed in and returned; noise comes only from a passed ``torch.Generator``.
Bad parameters raise ``ValueError("privacy.<key>=...")``. See docs/privacy.md.
"""

from fedtorch.privacy.accounting import Accountant, dp_event, epsilon, make_accountant, noise_multiplier_for
from fedtorch.privacy.adaptive import AdaptiveClip
from fedtorch.privacy.clipping import ClipOut, clip_updates
from fedtorch.privacy.dpfedavg import DPAggregate, DPFedAvg
from fedtorch.privacy.dpsgd import dp_sgd_gradient, per_sample_gradients
from fedtorch.privacy.local_dpsgd import LocalDPSGD
from fedtorch.privacy.gaussian import expected_clients, noisy_mean
from fedtorch.privacy.sampling import fixed_sample, poisson_sample

__all__ = [
    "Accountant", "AdaptiveClip", "ClipOut", "DPAggregate", "DPFedAvg", "LocalDPSGD", "clip_updates", "dp_event", "dp_sgd_gradient",
    "epsilon", "expected_clients", "fixed_sample", "make_accountant", "noise_multiplier_for", "noisy_mean",
    "per_sample_gradients", "poisson_sample",
]
