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
from torch.func import functional_call, grad, vmap

from fedtorch.flat import ParamLayout
from fedtorch.privacy._checks import check_clip, check_generator, check_sigma
from fedtorch.privacy.clipping import clip_updates


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
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        raise ValueError("per-sample gradients (DP-SGD) are undefined with BatchNorm layers: use GroupNorm or no norm layer")
    if flat_params.shape != (layout.numel,):
        raise ValueError(f"flat_params must have shape ({layout.numel},), got {tuple(flat_params.shape)}")
    if x.shape[0] != y.shape[0] or x.shape[0] < 1:
        raise ValueError(f"x and y need the same batch size B >= 1, got {tuple(x.shape)} and {tuple(y.shape)}")

    def sample_loss(params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(module, params, (xi.unsqueeze(0),)), yi.unsqueeze(0), reduction="sum")

    grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(layout.unflatten(flat_params), x, y)
    return layout.cat(grads)


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
    check_clip(clip)
    check_sigma(sigma, clip)
    check_generator(gen, flat_params)
    per_sample = per_sample_gradients(module, layout, flat_params, x, y, loss_fn).detach()
    clipped = clip_updates(per_sample, clip).clipped.double()
    noise = torch.randn(layout.numel, generator=gen, dtype=torch.float64, device=flat_params.device)
    std = sigma * clip if sigma > 0 else 0.0
    return ((clipped.sum(dim=0) + std * noise) / x.shape[0]).to(flat_params.dtype)
