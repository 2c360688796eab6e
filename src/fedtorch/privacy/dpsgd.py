"""Local DP-SGD with per-sample clipping (Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar,
Zhang, CCS 2016, "Deep Learning with Differential Privacy", Algorithm 1)::

    g_i   = grad_theta L(theta, x_i)                       per sample i of the lot (B samples)
    g_i  <- g_i * min(1, C / ||g_i||_2)                     clip each to C
    g~    = ( sum_i g_i + N(0, sigma^2 C^2 I) ) / B         noise the sum, divide by the lot size

The per-sample gradients are one ``torch.func.vmap(grad(...))`` over the batch, the model
called with ``functional_call`` on named views of the flat parameters
(:meth:`fedtorch.flat.ParamLayout.unflatten`, gathered back by :meth:`ParamLayout.cat`), as
fedtorch's vectorised executor builds its per-client gradients.

This is example-level privacy for one client's data; accounting it (Poisson lots of rate
``B / n_i`` over the client's local steps) is the lead's wiring: fedtorch's minibatches are
shuffled epochs, not Poisson lots, which :mod:`fedtorch.privacy.accounting`'s Poisson event
does not strictly describe. BatchNorm mixes samples (no per-sample gradient exists), so
models with BatchNorm layers are refused, as Opacus does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedtorch.flat import ParamLayout
from fedtorch.privacy._checks import check_clip, check_generator, check_sigma


def per_sample_gradients(module: nn.Module, layout: ParamLayout, flat_params: torch.Tensor, x: torch.Tensor,
                         y: torch.Tensor, loss_fn) -> torch.Tensor:
    """``(B, P)``: row i = the gradient of ``loss_fn(module(x[i:i+1]), y[i:i+1])`` at ``flat_params``.

    Args:
        module: the model (its own parameters are not read: ``flat_params`` replaces them).
        layout: ``ParamLayout.of(module)``, the element order of ``flat_params``.
        flat_params: ``(P,)`` floating, the point to differentiate at.
        x: ``(B, ...)`` inputs, y: ``(B,)`` targets.
        loss_fn: ``(logits, targets, reduction=...) -> loss`` (fedtorch's convention, e.g.
            ``torch.nn.functional.cross_entropy``); called with ``reduction="sum"`` on one sample.

    Raises:
        ValueError: a BatchNorm layer in ``module``; shapes that do not match.
    """
    return per_sample_losses_and_gradients(module, layout, flat_params, x, y, loss_fn)[1]


def per_sample_losses_and_gradients(module: nn.Module, layout: ParamLayout, flat_params: torch.Tensor, x: torch.Tensor,
                                    y: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """``((B,) per-sample losses, (B, P) per-sample gradients)`` (arguments and errors as
    :func:`per_sample_gradients`; one ``vmap(grad_and_value)`` pass gives both)."""
    check_per_sample_model(module)
    if flat_params.shape != (layout.numel,):
        raise ValueError(f"flat_params must have shape ({layout.numel},), got {tuple(flat_params.shape)}")
    if x.shape[0] != y.shape[0] or x.shape[0] < 1:
        raise ValueError(f"x and y need the same batch size B >= 1, got {tuple(x.shape)} and {tuple(y.shape)}")

    def sample_loss(params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(module, params, (xi.unsqueeze(0),)), yi.unsqueeze(0), reduction="sum")

    grads, losses = vmap(grad_and_value(sample_loss), in_dims=(None, 0, 0))(layout.unflatten(flat_params), x, y)
    return losses.detach(), layout.cat(grads)


def check_per_sample_model(module: nn.Module) -> None:
    """Raise ``ValueError`` if ``module`` has a BatchNorm layer: it mixes the samples of a
    batch, so no per-sample gradient exists (Opacus refuses it too)."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        raise ValueError("per-sample gradients (DP-SGD) are undefined with BatchNorm layers: use GroupNorm or no norm layer")


def dp_sgd_gradient(module: nn.Module, layout: ParamLayout, flat_params: torch.Tensor, x: torch.Tensor,
                    y: torch.Tensor, loss_fn, clip: float, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Abadi et al. (2016) Alg. 1's noisy gradient ``(sum_i clip_C(g_i) + N(0, sigma^2 C^2 I)) / B``.

    Args:
        module, layout, flat_params, x, y, loss_fn: as :func:`per_sample_gradients`.
        clip: C > 0 (``math.inf``: no clipping, then sigma must be 0).
        sigma: the noise multiplier >= 0.
        gen: the client's noise generator (on ``flat_params``' device); P standard normals
            are drawn on every call, also when sigma = 0.

    Returns:
        ``(P,)`` in ``flat_params``' dtype. With C = inf and sigma = 0 it is the plain mean
        gradient ``(1/B) sum_i g_i``; each sample moves it by at most ``C / B`` in L2.

    Raises:
        ValueError: ``privacy.clip`` / ``privacy.noise_multiplier`` out of range (sigma > 0
            needs a finite C), a bad generator, or the errors of :func:`per_sample_gradients`.
    """
    if x.shape[0] < 1:
        raise ValueError(f"x and y need the same batch size B >= 1, got {tuple(x.shape)} and {tuple(y.shape)}")
    return dp_sgd_step(module, layout, flat_params, x, y, loss_fn, clip, sigma, gen, x.shape[0])[1]


def clipped_sum(per_sample: torch.Tensor, clip: float) -> torch.Tensor:
    """``(P,)``: ``sum_i g_i min(1, C / ||g_i||)`` of the ``(B, P)`` rows, in their dtype.

    The same rule as :func:`~fedtorch.privacy.clipping.clip_updates` (which it matches to
    float32 rounding), done in the rows' dtype as one matrix-vector product: at B = 32 and
    P = 1.7 M (the FedAvg CNN) that takes 30 ms against 1.2 s for ``clip_updates``' float64
    copies and checks. Norms are float32 here, so a clipped row's norm may exceed C by a
    relative 1e-6. Non-finite rows propagate into the sum (the loop then drops the update).
    """
    norms = torch.linalg.vector_norm(per_sample, dim=1)
    scale = (clip / norms.clamp(min=torch.finfo(norms.dtype).tiny)).clamp(max=1.0)
    return scale.to(per_sample.dtype) @ per_sample


def dp_sgd_step(module: nn.Module, layout: ParamLayout, flat_params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                loss_fn, clip: float, sigma: float, gen: torch.Generator, lot_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One DP-SGD query on a lot: ``(mean loss, (sum_i clip_C(g_i) + N(0, sigma^2 C^2 I)) / L)``.

    The divisor is the *expected* lot size ``L`` (Abadi et al. 2016, Alg. 1 divides by the
    lot size L; with Poisson lots the realised size varies and dividing by it would make the
    sensitivity data-dependent, so ``L = q n``, as Opacus does). An empty lot (B = 0) gives
    ``noise / L`` and loss 0. The loss (the lot's mean unclipped sample loss) is a metric of
    the simulation: it is not privatised.

    Args:
        module, layout, flat_params, loss_fn: as :func:`per_sample_gradients`.
        x: ``(B, ...)`` the lot's inputs (B >= 0), y: ``(B,)`` targets.
        clip, sigma, gen: as :func:`dp_sgd_gradient` (P standard normals drawn per call).
        lot_size: L > 0, in samples.

    Returns:
        ``(loss (0-dim), gradient (P,))`` in ``flat_params``' dtype.

    Raises:
        ValueError: as :func:`dp_sgd_gradient`, or ``lot_size`` not > 0.
    """
    check_clip(clip)
    check_sigma(sigma, clip)
    check_generator(gen, flat_params)
    if not lot_size > 0:
        raise ValueError(f"lot_size must be > 0 samples, got {lot_size!r}")
    if x.shape[0] == 0:
        check_per_sample_model(module)
        total = torch.zeros(layout.numel, dtype=torch.float64, device=flat_params.device)
        loss = torch.zeros((), dtype=flat_params.dtype, device=flat_params.device)
    else:
        losses, per_sample = per_sample_losses_and_gradients(module, layout, flat_params, x, y, loss_fn)
        total = clipped_sum(per_sample.detach(), clip).double()
        loss = losses.mean().to(flat_params.dtype)
    noise = torch.randn(layout.numel, generator=gen, dtype=torch.float64, device=flat_params.device)
    std = sigma * clip if sigma > 0 else 0.0
    return loss, ((total + std * noise) / lot_size).to(flat_params.dtype)
