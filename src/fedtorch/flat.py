"""Flat parameter vectors: one contiguous tensor holds all of a model's parameters.

Everything that crosses a boundary in fedtorch (broadcast, client message, aggregation)
is a flat vector of P floats, or a stack ``(K, P)`` for K clients. :class:`FlatModule`
makes an ``nn.Module``'s parameters and gradients *views* into two flat buffers, so
loading a global model is one ``copy_`` and a local SGD step is one fused vector op.

Convolution weights are stored channels-last inside the flat vector (``(O, kh, kw, I)``
element order; the module still sees ``(O, I, kh, kw)`` tensors, with channels-last
strides), because oneDNN's CPU convolutions, and the pooling and activations after them,
run faster on channels-last tensors: the FedAvg CNN's SGD step at batch 32 on a 2-core
CPU takes 15.4 ms instead of 19.9 ms on one thread and 9.1 ms instead of 11.4 ms on two.
The order of elements in a flat vector is therefore a property of its
:class:`ParamLayout`; use :meth:`ParamLayout.unflatten`, :meth:`ParamLayout.flatten`
and :meth:`ParamLayout.load` to move between flat vectors and modules, never
``torch.nn.utils.vector_to_parameters``.

Buffers (BatchNorm's running statistics and ``num_batches_tracked``) cross boundaries as a
second flat vector with its own layout (``ParamLayout.of(module, buffers=True)``): the
module's persistent buffers (those in its ``state_dict``), in ``named_buffers()`` order, all
in the parameters' float dtype (an integer counter such as ``num_batches_tracked`` is exact
there up to 2^24 in float32; :meth:`ParamLayout.load` rounds it back). Inside a replica they
stay the module's own tensors (:meth:`FlatModule.read_buffers` / :meth:`FlatModule.load_buffers`
copy them out and in): views of one flat tensor would share one autograd version counter, so
BatchNorm's in-place update of one layer's statistics would invalidate the statistics another
layer saved for backward. They are not parameters: no algorithm sees them; the federation loop
averages them or keeps them per client (:mod:`fedtorch.federation.model_buffers`).
Non-persistent buffers (constants a module rebuilds itself) stay in each replica.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of a module's parameters inside a flat vector.

    Attributes:
        names: parameter names in ``module.named_parameters()`` order.
        shapes: their shapes.
        offsets: start offset of each parameter in the flat vector (elements).
        numel: P, the total number of elements.
        channels_last: per parameter, whether its elements are stored in channels-last
            order (``(O, kh, kw, I)`` for an ``(O, I, kh, kw)`` convolution weight).
        buffers: whether this is the layout of the module's persistent buffers rather
            than of its parameters.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]
    numel: int
    channels_last: tuple[bool, ...] = ()
    buffers: bool = False

    def __post_init__(self):
        if not self.channels_last:  # a layout built without one stores everything in order
            object.__setattr__(self, "channels_last", (False,) * len(self.names))

    @staticmethod
    def of(module: nn.Module, channels_last: bool = True, buffers: bool = False) -> "ParamLayout":
        """The layout of ``module``'s parameters; with ``channels_last``, the weights of
        its ``nn.Conv2d`` layers are stored channels-last. With ``buffers``, the layout of
        its persistent buffers instead (stored in order; see the module docstring)."""
        conv = {id(m.weight) for m in module.modules() if isinstance(m, nn.Conv2d)} if channels_last else set()
        names, shapes, offsets, order, off = [], [], [], [], 0
        for name, p in _named(module, buffers):
            names.append(name)
            shapes.append(p.shape)
            offsets.append(off)
            order.append(id(p) in conv)
            off += p.numel()
        return ParamLayout(tuple(names), tuple(shapes), tuple(offsets), off, tuple(order), buffers)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat`` (shape ``(..., P)``) as named tensors (``(..., *shape)``;
        channels-last strides for the parameters stored that way)."""
        lead = flat.shape[:-1]
        views = {}
        for n, s, o, cl in zip(self.names, self.shapes, self.offsets, self.channels_last):
            chunk = flat[..., o : o + s.numel()]
            views[n] = chunk.view(*lead, s[0], *s[2:], s[1]).movedim(-1, len(lead) + 1) if cl else chunk.view((*lead, *s))
        return views

    def cat(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`unflatten`: named ``(..., *shape)`` tensors (any strides) to
        one new ``(..., P)`` tensor in this layout's element order."""
        parts = []
        for n, s, cl in zip(self.names, self.shapes, self.channels_last):
            t = tensors[n]
            lead = t.shape[: t.dim() - len(s)]
            parts.append((t.movedim(-3, -1) if cl else t).reshape(*lead, -1))
        return torch.cat(parts, dim=-1)

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """A new ``(P,)`` vector holding ``module``'s parameters (or buffers) in this layout."""
        first = next(module.parameters())
        if not self.names:
            return first.new_empty(0).detach()
        return self.cat({name: p.detach().to(first.dtype) for name, p in self._tensors(module)})

    def load(self, module: nn.Module, flat: torch.Tensor) -> None:
        """Copy the ``(P,)`` vector ``flat`` (this layout) into ``module``'s parameters (or
        buffers; an integer buffer gets the rounded value).

        Raises:
            KeyError: ``module`` has a parameter this layout does not name.
            RuntimeError: a parameter's shape differs from the layout's.
        """
        views = self.unflatten(flat)
        with torch.no_grad():
            for name, p in self._tensors(module):
                v = views[name]
                p.copy_(v if p.is_floating_point() else v.round())

    def state_dict(self, flat: torch.Tensor, like: nn.Module) -> dict[str, torch.Tensor]:
        """Named CPU tensors of ``flat`` (this layout) with ``like``'s dtypes (integer
        buffers rounded): a plain ``state_dict`` part."""
        dtypes = {name: t.dtype for name, t in self._tensors(like)}
        out = {}
        for name, t in self.unflatten(flat).items():
            t = t.detach().cpu()
            out[name] = (t if dtypes[name].is_floating_point else t.round()).to(dtypes[name]).contiguous().clone()
        return out

    def nbytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of one flat vector of this layout in ``dtype``."""
        return self.numel * torch.empty((), dtype=dtype).element_size()


    def _tensors(self, module: nn.Module):
        """``module.named_parameters()``, or the buffers this layout names, by name (no
        ``state_dict`` walk on the per-client path of :meth:`FlatModule.read_buffers`)."""
        if not self.buffers:
            return module.named_parameters()
        return [(n, module.get_buffer(n)) for n in self.names]


def _named(module: nn.Module, buffers: bool):
    """``module.named_parameters()``, or its persistent buffers (those ``state_dict`` holds)."""
    if not buffers:
        return module.named_parameters()
    persistent = set(module.state_dict(keep_vars=True))
    return [(n, b) for n, b in module.named_buffers() if n in persistent]


class FlatModule:
    """A module replica whose parameters and gradients live in two flat buffers.

    Attributes:
        module: the wrapped ``nn.Module`` (its parameters are views of ``params``).
        layout: the parameters' :class:`ParamLayout`.
        buffer_layout: the persistent buffers' :class:`ParamLayout` (``numel`` Q, 0 for a
            model without; see the module docstring).
        params: ``(P,)`` float32 tensor; writing to it changes the module's weights.
        grad: ``(P,)`` float32 tensor; ``backward()`` accumulates gradients into it.

    Args:
        module: the model; its current weights become :attr:`params`.
        channels_last: store convolution weights channels-last (see the module
            docstring); every replica of one model must use the same setting.
    """

    def __init__(self, module: nn.Module, channels_last: bool = True):
        self.module = module
        self.layout = ParamLayout.of(module, channels_last)
        self.buffer_layout = ParamLayout.of(module, buffers=True)
        first = next(module.parameters())
        self.params = torch.empty(self.layout.numel, dtype=first.dtype, device=first.device)
        self.grad = torch.zeros_like(self.params)
        views = self.layout.unflatten(self.params)
        grads = self.layout.unflatten(self.grad)
        for name, p in module.named_parameters():
            views[name].copy_(p.detach())
            p.data = views[name]
            p.grad = grads[name]

    @property
    def has_buffers(self) -> bool:
        """Whether the module has persistent buffers (Q > 0)."""
        return self.buffer_layout.numel > 0

    def read_buffers(self) -> torch.Tensor:
        """A new ``(Q,)`` vector (the parameters' dtype) of the module's buffers now."""
        return self.buffer_layout.flatten(self.module)

    def load_buffers(self, flat: torch.Tensor) -> None:
        """Copy the ``(Q,)`` vector ``flat`` into the module's buffers (integers rounded)."""
        self.buffer_layout.load(self.module, flat)

    def loss_and_grad(
        self, inputs: torch.Tensor, targets: torch.Tensor, loss_fn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean minibatch loss and its gradient at the current ``params``.

        Args:
            inputs: ``(B, ...)`` minibatch on the module's device.
            targets: ``(B,)`` labels.
            loss_fn: ``(outputs, targets) -> scalar`` mean loss.

        Returns:
            ``(loss, grad)``: a detached scalar tensor (no host sync) and ``self.grad``
            (``(P,)``, overwritten by the next call: clone it to keep it).
        """
        self.grad.zero_()
        loss = loss_fn(self.module(inputs), targets)
        loss.backward()
        return loss.detach(), self.grad
