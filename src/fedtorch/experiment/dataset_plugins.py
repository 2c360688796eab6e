"""Dataset plug-ins (``data.dataset`` references, ``config.py``'s ``DATASET``, and dataset
objects handed to ``fedtorch.run``): what they may return and how it becomes a
:class:`~fedtorch.data.TensorDataset`. The rule is :data:`~fedtorch.experiment.plugins.DATASET_RULE`
(module docstring of :mod:`fedtorch.experiment.plugins`); resolving a reference is that
module's one mechanism for every plug-in kind."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch

from fedtorch.experiment.errors import ConfigError
from fedtorch.experiment.plugins import DATASET_RULE, callable_plugin


def is_dataset(obj: Any) -> bool:
    """Whether ``obj`` reads as a map-style dataset of ``(x, y)`` items: a torch ``Dataset``,
    or any object with ``__len__`` and ``__getitem__`` (a torchvision-style class, a list of
    pairs) that is not a tensor, an array, a string or a mapping."""
    if isinstance(obj, torch.utils.data.Dataset):
        return True
    return (hasattr(obj, "__len__") and hasattr(obj, "__getitem__")
            and not isinstance(obj, (torch.Tensor, np.ndarray, str, bytes, Mapping)))


_PAIR_NUMBERS = itertools.count(1)  # each pair gets a reference of its own


def dataset_pair(pair: Sequence) -> Callable:
    """The ``data.dataset`` callable ``() -> (train_dataset, test_dataset)`` of a pair of
    dataset objects handed to ``fedtorch.run(dataset=(train, test))``.

    Its reference (``fedtorch.experiment.dataset_plugins:dataset_pair.<locals>.pair<n>``) names this
    pair in this process only: ``fedtorch.resume`` in a fresh process needs an importable
    callable instead.

    Raises:
        ConfigError: not two dataset objects (:func:`is_dataset`).
    """
    if len(pair) != 2 or not all(is_dataset(d) for d in pair):
        got = ", ".join(type(d).__name__ for d in pair)
        raise ConfigError(f"dataset=({got}) is not allowed: give (train_dataset, test_dataset), two objects with "
                          f"__len__ and __getitem__ returning (x, y), or {DATASET_RULE}")
    train, test = pair

    def pair_fn():
        return train, test

    pair_fn.__qualname__ = f"dataset_pair.<locals>.pair{next(_PAIR_NUMBERS)}"
    return pair_fn


def _input(x: Any) -> torch.Tensor:
    """One item's ``x`` as a tensor; a PIL image as torchvision's ``ToTensor`` makes it:
    ``(C, H, W)``, float32 in [0, 1] for 8-bit images."""
    if hasattr(x, "getbands") and hasattr(x, "mode"):  # a PIL image (PIL need not be installed)
        a = np.array(x)  # a writable copy
        a = np.ascontiguousarray(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        t = torch.from_numpy(a).float()
        return t.div_(255) if a.dtype == np.uint8 else t
    return torch.as_tensor(x)


def _materialise(key: str, ref: str, ds) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        items = [ds[i] for i in range(len(ds))]
        xs = torch.stack([_input(x) for x, _ in items])
        ys = torch.as_tensor([int(y) for _, y in items], dtype=torch.int64)
    except Exception as e:
        raise ConfigError(f"{key}={ref!r}: cannot read its Dataset as (x, y) items ({type(e).__name__}: {e})") from None
    return xs, ys


def _tensor(key: str, ref: str, what: str, value) -> torch.Tensor:
    try:
        t = torch.as_tensor(value)
    except Exception:
        raise ConfigError(f"{key}={ref!r}: {what} is a {type(value).__name__}, not a tensor; it must be {DATASET_RULE}") from None
    return t.float() if t.is_floating_point() else t


def load_dataset(ref: str, name_key: str = "data.dataset"):
    """The :class:`~fedtorch.data.TensorDataset` a ``data.dataset`` reference returns.

    Raises:
        ConfigError: not callable or wrong signature, it raises, the wrong structure, or
            inconsistent shapes or labels.
    """
    from fedtorch.data.tensors import TensorDataset

    fn = callable_plugin(name_key, ref, 0, DATASET_RULE)
    try:
        out = fn()
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{name_key}={ref!r} raised {type(e).__name__}: {e}") from None
    datasets = isinstance(out, (tuple, list)) and len(out) == 2 and all(is_dataset(d) for d in out)
    if datasets:
        (train_x, train_y), (test_x, test_y) = (_materialise(name_key, ref, d) for d in out)
    elif isinstance(out, (tuple, list)) and len(out) == 4:
        train_x, train_y, test_x, test_y = (_tensor(name_key, ref, w, v) for w, v in
                                            zip(("train_x", "train_y", "test_x", "test_y"), out))
    else:
        got = f"a {type(out).__name__}" + (f" of {len(out)} items" if isinstance(out, (tuple, list)) else "")
        raise ConfigError(f"{name_key}={ref!r} returned {got}; it must return {DATASET_RULE}")
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if y.ndim != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ConfigError(f"{name_key}={ref!r}: {split}_y must be (N,) integer labels; got {tuple(y.shape)} {y.dtype}")
        if x.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ConfigError(f"{name_key}={ref!r}: {split}_x has {tuple(x.shape)}, {split}_y has {tuple(y.shape)}; "
                              "they need the same number N >= 1 of rows")
        if int(y.min()) < 0:
            raise ConfigError(f"{name_key}={ref!r}: {split}_y has a negative label {int(y.min())}; labels are 0..C-1")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ConfigError(f"{name_key}={ref!r}: train_x samples are {tuple(train_x.shape[1:])} but test_x samples are "
                          f"{tuple(test_x.shape[1:])}")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    return TensorDataset(train_x.contiguous(), train_y.long(), test_x.contiguous(), test_y.long(), num_classes, ref)
