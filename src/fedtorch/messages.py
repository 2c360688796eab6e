"""What a client sends up: :class:`ClientMessage`, its stacking into ``(M, ...)`` fields and
back. Part of the contracts of :mod:`fedtorch.protocol`, which re-exports it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ClientMessage:
    """What a client sends up. Algorithms may subclass it to add tensor fields.

    Attributes:
        delta: ``(P,)`` pseudo-gradient Delta_i = x^t - y_{i,K_i} (or ``(M, P)`` stacked).
        num_samples: n_i (int, or ``(M,)`` tensor when stacked).
        num_steps: K_i (int, or ``(M,)`` tensor when stacked).
        loss: mean local training loss over the K_i steps (float, or ``(M,)``).
        num_clients: how many clients' messages this one combines: 1 for a client; an
            edge's partial sum sets its count (:mod:`fedtorch.edge_sums`).
    """

    delta: Tensor
    num_samples: int | Tensor
    num_steps: int | Tensor
    loss: float | Tensor
    num_clients: int | Tensor = 1

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor payload sent to the server (scalars not counted)."""
        return sum(_nbytes(getattr(self, f.name)) for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), Tensor))

    @staticmethod
    def empty(num_params: int, device: torch.device | str = "cpu") -> "ClientMessage":
        """A stacked message of zero clients: ``delta (0, P)`` and ``(0,)`` scalar fields (a
        round whose Poisson sample is empty)."""
        return ClientMessage(delta=torch.zeros(0, num_params, device=device),
                             num_samples=torch.zeros(0, dtype=torch.int64, device=device),
                             num_steps=torch.zeros(0, dtype=torch.int64, device=device),
                             loss=torch.zeros(0, dtype=torch.float64, device=device),
                             num_clients=torch.zeros(0, dtype=torch.int64, device=device))

    @staticmethod
    def stack(messages: list["ClientMessage"]) -> "ClientMessage":
        """Stack M messages of one type into one with ``(M, ...)`` fields.

        A tensor field whose M values are the consecutive rows of one contiguous tensor
        (as the vectorised executor returns a round's messages) becomes a view of those
        rows, not a copy; otherwise the values are copied. The result may therefore share
        memory with the messages: treat it as read-only.

        Raises:
            ValueError: if ``messages`` is empty or mixes message types.
        """
        if not messages:
            raise ValueError("cannot stack zero client messages")
        kind = type(messages[0])
        if any(type(m) is not kind for m in messages):
            raise ValueError("cannot stack messages of different types")
        out = {}
        for f in dataclasses.fields(kind):
            values = [getattr(m, f.name) for m in messages]
            if isinstance(values[0], Tensor):
                rows = _consecutive_rows(values)
                out[f.name] = torch.stack(values) if rows is None else rows
            else:
                dtype = torch.float64 if isinstance(values[0], float) else torch.int64
                out[f.name] = torch.tensor(values, dtype=dtype, device=messages[0].delta.device)
        return kind(**out)

    def unstack(self) -> list["ClientMessage"]:
        """Split a message with a leading client dimension C into C single-client ones.

        Tensor fields ``(C, ...)`` become ``(...)``; ``(C,)`` or ``(C, 1)`` scalar fields
        (num_samples, num_steps, loss, num_clients) become Python numbers.
        """
        names = [f.name for f in dataclasses.fields(self)]
        count = self.delta.shape[0]
        columns = {}
        for name in names:  # one host transfer per scalar field, not one per client
            v = getattr(self, name)
            if name in _SCALAR_FIELDS:
                cast = float if name == "loss" else int
                v = [cast(a) for a in v.reshape(count).tolist()] if isinstance(v, Tensor) else [cast(v)] * count
            columns[name] = v
        return [type(self)(**{name: columns[name][i] for name in names}) for i in range(count)]

    def select(self, mask: Tensor) -> "ClientMessage":
        """Rows of a stacked message where ``mask`` (``(M,)`` bool) is true."""
        return type(self)(**{f.name: (v[mask] if isinstance(v := getattr(self, f.name), Tensor) else v)
                             for f in dataclasses.fields(self)})


_SCALAR_FIELDS = ("num_samples", "num_steps", "loss", "num_clients")


def _consecutive_rows(values: list[Tensor]) -> Tensor | None:
    """``torch.stack(values)`` as a view, when the M tensors are contiguous, alike (shape,
    dtype, device) and lie one after another in one storage; else None."""
    first = values[0]
    n, offset = first.numel(), first.storage_offset()
    if n == 0 or not first.is_contiguous():
        return None
    ptr = first.untyped_storage().data_ptr()
    for i, v in enumerate(values):
        if (v.storage_offset() != offset + i * n or v.untyped_storage().data_ptr() != ptr or v.shape != first.shape
                or v.dtype != first.dtype or v.device != first.device or not v.is_contiguous()):
            return None
    return first.as_strided((len(values), *first.shape), (n, *first.stride()), offset)


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()
