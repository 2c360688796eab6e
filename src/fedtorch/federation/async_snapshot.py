"""The state of an asynchronous run between two arrival groups, as plain values for a checkpoint.

An :class:`~fedtorch.federation.async_loop.AsyncServer` is snapshotted by the simulated
clock's driver after it applied a group of arrivals and trained the wave it dispatched. At
that moment every job in flight has its :class:`~fedtorch.protocol.ClientResult` already
(training happens at dispatch; only the order of arrivals follows simulated time), so a
snapshot holds, besides the server state and the client-state store (saved by the
checkpoint itself):

* the simulated clock (``now``), the arrival count, the next wave and dispatch numbers;
* every job in flight: its dispatch order, wave, model version, dispatch and arrival times
  (simulated seconds), task (context and sample indices), state at dispatch and bytes sent
  down, with its trained result (message and new state);
* the server step's buffer (FedBuff's buffered arrivals; empty for per-arrival rules).

Nothing random needs saving: delays, client sampling, stragglers and local minibatches are
drawn from ``(seed, wave, client, purpose)`` generators, so the wave counter is their
position. Restoring a snapshot into a fresh server built from the same config and running
on gives the uninterrupted run's model and event log bit for bit (tested).

Messages of an algorithm's own :class:`~fedtorch.protocol.ClientMessage` subclass are stored
as their fields plus the class's ``module:qualname``, and rebuilt by importing that class,
so the checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import importlib

_CLASS_KEY = "__dataclass__"


def to_plain(obj):
    """``obj`` with every dataclass instance replaced by a dict of its fields (recursively).

    Tensors, numbers, strings, None, lists, tuples and dicts are kept (their items
    converted), so the result is ``torch.load(weights_only=True)``-safe.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        fields = {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return {_CLASS_KEY: f"{cls.__module__}:{cls.__qualname__}", **fields}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def from_plain(obj):
    """Inverse of :func:`to_plain`.

    Raises:
        ValueError: a stored dataclass whose class can no longer be imported (a renamed
            message class, or one defined in a script that is not importable).
    """
    if isinstance(obj, dict):
        items = {k: from_plain(v) for k, v in obj.items() if k != _CLASS_KEY}
        return _class(obj[_CLASS_KEY])(**items) if _CLASS_KEY in obj else items
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_plain(v) for v in obj)
    return obj


def _class(name: str):
    module, _, qualname = name.partition(":")
    try:
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"the checkpoint holds a {name} that cannot be imported ({e}); "
                         "resume with the code that wrote it, or start the run again") from None
    return cls
