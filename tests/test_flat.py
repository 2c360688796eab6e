"""Flat parameter vectors: layouts (convolution weights channels-last), views, round trips."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedtorch.flat import FlatModule, ParamLayout
from fedtorch.models.cnn import FedAvgCNN


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def test_conv_weights_are_stored_channels_last_and_views_round_trip():
    module = small_cnn()
    reference = {n: p.detach().clone() for n, p in module.named_parameters()}
    flat = FlatModule(module)
    layout = flat.layout
    assert layout.channels_last == (True, False, False, False)
    weight = reference["0.weight"]  # (O, I, kh, kw) = (4, 3, 3, 3)
    assert torch.equal(flat.params[: weight.numel()], weight.permute(0, 2, 3, 1).reshape(-1))
    assert module[0].weight.is_contiguous(memory_format=torch.channels_last)
    for name, p in module.named_parameters():  # the module sees the same values, as views
        assert torch.equal(p, reference[name]) and p.data_ptr() >= flat.params.data_ptr()
    assert torch.equal(layout.cat(layout.unflatten(flat.params)), flat.params)
    stacked = torch.stack([flat.params, 2 * flat.params])
    assert torch.equal(layout.cat(layout.unflatten(stacked)), stacked)
    plain = small_cnn()
    nn.init.zeros_(plain[0].weight)
    layout.load(plain, flat.params)
    assert all(torch.equal(p, reference[n]) for n, p in plain.named_parameters())
    assert torch.equal(layout.flatten(plain), flat.params)
    assert ParamLayout.of(module, channels_last=False).channels_last == (False,) * 4


def test_flat_gradient_is_the_module_gradient():
    """The channels-last replica computes the plain module's loss and gradient (up to the
    rounding of a different convolution kernel)."""
    torch.manual_seed(1)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    torch.manual_seed(2)
    plain = FedAvgCNN((1, 28, 28), 10)
    torch.manual_seed(2)
    flat = FlatModule(FedAvgCNN((1, 28, 28), 10))
    loss = F.cross_entropy(plain(x), y)
    loss.backward()
    flat_loss, g = flat.loss_and_grad(x, y, F.cross_entropy)
    torch.testing.assert_close(flat_loss, loss.detach(), rtol=1e-5, atol=1e-6)
    expected = ParamLayout.of(plain).cat({n: p.grad for n, p in plain.named_parameters()})
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-6)
