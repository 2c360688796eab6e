"""User plug-ins: a model, dataset, partitioner, loss or algorithm from the user's own code.

One mechanism for every kind. A config value that holds a ``:`` is a *reference* to an
object in Python code, not a built-in name:

* ``package.module:Name`` (dotted path; the module is imported, so it must be on
  ``sys.path`` / ``PYTHONPATH`` or installed), or
* ``path/to/file.py:Name`` (the file is loaded; a relative path in an experiment's
  ``CONFIG`` is relative to the experiment folder, one on the command line to the
  working directory).

The keys that take references: ``model.name``, ``data.dataset``, ``data.partition``,
``model.loss`` and ``algorithm.name``. An experiment's
``config.py`` may instead define ``MODEL``, ``DATASET``, ``PARTITION``, ``LOSS`` and
algorithm classes itself (:func:`experiment_plugins`); the loader then writes the absolute
``.../config.py:MODEL`` reference into the config, so ``config.yaml`` names the code a run
used and ``fedtorch run --resume`` finds it again in a fresh process.

Files are loaded under a stable module name derived from their absolute path
(:func:`module_name`) and registered in ``sys.modules``; an import hook maps that name back
to the file, so a fresh process can import ``module:qualname`` of a class defined in an
experiment's ``config.py`` (the asynchronous checkpoint stores message classes that way).

What each kind must be (every violation is one :class:`ConfigError` naming the key, the
reference and the rule):

* model: ``(input_shape, num_classes) -> nn.Module`` mapping ``(B, *input_shape)`` to
  ``(B, num_classes)`` logits (checked on one batch of training samples);
* dataset: ``() -> (train_x, train_y, test_x, test_y)`` tensors (or numpy arrays), or
  ``() -> (train_dataset, test_dataset)`` map-style datasets of ``(x, y)`` items that fit
  in memory (materialised once; :func:`~fedtorch.experiment.dataset_plugins.is_dataset`: a torch ``Dataset`` or any object with
  ``__len__`` and ``__getitem__``, as torchvision's; a PIL image ``x`` becomes what
  torchvision's ``ToTensor`` makes of it); ``x (N, *input_shape)``, ``y (N,)`` integer
  labels >= 0. ``fedtorch.run(dataset=(train_dataset, test_dataset))`` takes the pair
  itself (:func:`~fedtorch.experiment.dataset_plugins.dataset_pair`);
* partition: ``(targets, num_clients, rng) -> {client: indices}`` (or a list of
  ``num_clients`` index arrays), ``targets`` the ``(N,)`` int64 numpy training labels and
  ``rng`` a ``numpy.random.Generator`` seeded with ``data.seed``; every client gets at least
  one index, every index is in ``[0, N)`` and used at most once;
* loss: like ``torch.nn.functional.cross_entropy``: ``(logits (B, C), labels (B,)) ->``
  scalar mean loss over the batch (evaluation sums it as mean x B);
* algorithm: a subclass of :class:`~fedtorch.algorithms.base.FedAlgorithm` with its own
  ``name`` that overrides at least one hook.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import inspect
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fedtorch.experiment.errors import ConfigError

PREFIX = "_fedtorch_file_"
EXPERIMENT_NAMES = {"MODEL": "model.name", "DATASET": "data.dataset", "PARTITION": "data.partition", "LOSS": "model.loss"}
MODEL_RULE = "a callable (input_shape, num_classes) -> nn.Module"
DATASET_RULE = ("a callable () -> (train_x, train_y, test_x, test_y) tensors, or () -> (train_dataset, test_dataset) "
                "Datasets of (x, y) items (torch or torchvision-style: __len__ and __getitem__)")
PARTITION_RULE = "a callable (targets, num_clients, rng) -> {client: indices}"
LOSS_RULE = "a callable (logits, labels) -> scalar loss, like torch.nn.functional.cross_entropy"


def is_reference(value: Any) -> bool:
    """Whether a config value names user code (``module:Name`` or ``file.py:Name``)."""
    return isinstance(value, str) and ":" in value


def module_name(path: str | Path) -> str:
    """The stable module name of a user file: ``_fedtorch_file_<hex of its absolute path>``."""
    return PREFIX + str(Path(path).resolve()).encode().hex()


class _FileFinder(importlib.abc.MetaPathFinder):
    """Imports a :func:`module_name` from the file it names (in a fresh process too)."""

    def find_spec(self, name, path=None, target=None):
        if not name.startswith(PREFIX):
            return None
        try:
            file = bytes.fromhex(name[len(PREFIX):]).decode()
        except ValueError:
            return None
        return importlib.util.spec_from_file_location(name, file) if Path(file).is_file() else None


if not any(isinstance(f, _FileFinder) for f in sys.meta_path):
    sys.meta_path.append(_FileFinder())


def load_file(path: str | Path):
    """Load a Python file as module :func:`module_name` (again only if it changed on disk).

    Raises:
        ConfigError: the file is missing or raises while it runs.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"no such file {str(path)!r}")
    name, stat = module_name(path), path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__fedtorch_stamp__", None) == stamp:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a user's file: report, do not crash
        del sys.modules[name]
        raise ConfigError(f"{path}: cannot load ({type(e).__name__}: {e})") from None
    module.__fedtorch_stamp__ = stamp
    return module


def reference(obj: Any) -> str:
    """The reference that :func:`resolve` turns back into ``obj`` (a class or function)."""
    module = getattr(obj, "__module__", None) or "?"
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "?")
    if module.startswith(PREFIX):
        module = bytes.fromhex(module[len(PREFIX):]).decode()
    return f"{module}:{qualname}"


_PROVIDED: dict[str, Any] = {}


def provide(obj: Any) -> str:
    """Make ``obj`` (a model, dataset, partition or loss callable, or an algorithm class
    handed to ``fedtorch.run``) resolvable in this process; return its :func:`reference`.

    A fresh process (``fedtorch run --resume``) finds it only if that reference is
    importable (defined at the top level of an importable module or a file).
    """
    ref = reference(obj)
    _PROVIDED[ref] = obj
    return ref


def resolve(key: str, ref: str, base: Path | None = None) -> Any:
    """The object a reference names.

    Args:
        key: the config key (for messages).
        ref: ``package.module:Name`` or ``path/file.py:Name`` (``Name`` may be dotted).
        base: the folder a relative file path is relative to (default: working directory).

    Raises:
        ConfigError: malformed reference, module or file not importable, no such attribute.
    """
    if ref in _PROVIDED:
        return _PROVIDED[ref]
    target, _, attr = ref.rpartition(":")
    if not target or not attr:
        raise ConfigError(f"{key}={ref!r} is not a plug-in reference: write package.module:Name or path/to/file.py:Name")
    if target.endswith(".py"):
        file = Path(target)
        if not file.is_absolute() and base is not None:
            file = base / file
        if not file.is_file():
            raise ConfigError(f"{key}={ref!r}: no such file {str(file)!r}")
        module = load_file(file)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ConfigError(f"{key}={ref!r}: module {target!r} cannot be imported ({e}); "
                              "put its folder on PYTHONPATH or install it") from None
        except Exception as e:
            raise ConfigError(f"{key}={ref!r}: module {target!r} raised while importing ({type(e).__name__}: {e})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}={ref!r}: {target!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def check_callable(key: str, ref: str, obj: Any, nargs: int, rule: str) -> None:
    """Raise ConfigError unless ``obj`` can be called with ``nargs`` positional arguments."""
    if not callable(obj):
        raise ConfigError(f"{key}={ref!r} is a {type(obj).__name__}, not callable; it must be {rule}")
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # some builtins have none: accept
        return
    try:
        signature.bind(*range(nargs))
    except TypeError:
        raise ConfigError(f"{key}={ref!r} has the wrong signature {signature}; it must be {rule}") from None


def callable_plugin(key: str, ref: str, nargs: int, rule: str, base: Path | None = None) -> Callable:
    """:func:`resolve` then :func:`check_callable`."""
    obj = resolve(key, ref, base)
    check_callable(key, ref, obj, nargs, rule)
    return obj


# ---- models -------------------------------------------------------------------------------
def model_factory(name: str) -> Callable:
    """The ``(input_shape, num_classes) -> nn.Module`` factory of a ``model.name`` reference."""
    return callable_plugin("model.name", name, 2, MODEL_RULE)


def check_module(name: str, model: Any) -> None:
    """Raise ConfigError unless the ``model.name`` plug-in returned an ``nn.Module``."""
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model.name={name!r} returned a {type(model).__name__}, not an nn.Module; it must be {MODEL_RULE}")


def check_model(name: str, model: torch.nn.Module, sample_x: torch.Tensor, num_classes: int) -> None:
    """One forward pass of ``sample_x (B, *input_shape)``: the output must be ``(B, num_classes)``.

    Raises:
        ConfigError: not an ``nn.Module``, the forward pass raises, or another output shape.
    """
    check_module(name, model)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        try:
            out = model(sample_x)
        except Exception as e:
            raise ConfigError(f"model.name={name!r}: the forward pass of a batch of shape {tuple(sample_x.shape)} "
                              f"raised {type(e).__name__}: {e}") from None
    want = (sample_x.shape[0], num_classes)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != want:
        raise ConfigError(f"model.name={name!r} maps a batch of shape {tuple(sample_x.shape)} to {got}, "
                          f"not (batch, num_classes) = {want}")


# ---- partitions ---------------------------------------------------------------------------
def partition(ref: str, targets: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Split ``targets (N,)`` with a ``data.partition`` reference; ``rng`` is
    ``numpy.random.default_rng(seed)`` (``seed`` = ``data.seed``).

    Returns:
        One non-empty sorted int64 index array per client.

    Raises:
        ConfigError: not callable or wrong signature, it raises, a result that is not one
            index array per client, an index outside ``[0, N)``, a repeated index, an empty client.
    """
    key = "data.partition"
    fn = callable_plugin(key, ref, 3, PARTITION_RULE)
    try:
        out = fn(np.array(targets, dtype=np.int64), num_clients, np.random.default_rng(seed))
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{key}={ref!r} raised {type(e).__name__}: {e}") from None
    if isinstance(out, Mapping):
        keys = set(out)
        if keys != set(range(num_clients)):
            raise ConfigError(f"{key}={ref!r} returned clients {sorted(keys, key=str)[:5]}...; "
                              f"it must return one entry for each client 0..{num_clients - 1}")
        out = [out[i] for i in range(num_clients)]
    elif not isinstance(out, Sequence) or isinstance(out, str) or len(out) != num_clients:
        raise ConfigError(f"{key}={ref!r} returned a {type(out).__name__}; it must return {{client: indices}} "
                          f"for each client 0..{num_clients - 1}")
    n, parts = len(targets), []
    for i, p in enumerate(out):
        a = np.asarray(p.cpu() if isinstance(p, torch.Tensor) else p)
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise ConfigError(f"{key}={ref!r}: client {i}'s indices are not a 1-D integer array ({a.dtype}, shape {a.shape})")
        if a.size == 0:
            raise ConfigError(f"{key}={ref!r} gave client {i} no samples; every client needs at least one")
        if a.min() < 0 or a.max() >= n:
            raise ConfigError(f"{key}={ref!r}: client {i} has index {int(a.min() if a.min() < 0 else a.max())}, "
                              f"outside the {n} training samples [0, {n})")
        parts.append(np.sort(a.astype(np.int64)))
    used = np.concatenate(parts)
    if len(np.unique(used)) != len(used):
        raise ConfigError(f"{key}={ref!r} gave some training samples to more than one client (or twice to one); "
                          "each index may be used at most once")
    return parts


# ---- losses -------------------------------------------------------------------------------
def loss_function(ref: str | None) -> Callable:
    """The loss of a ``model.loss`` reference; ``F.cross_entropy`` for None or ``cross_entropy``."""
    if ref is None or ref == "cross_entropy":
        return torch.nn.functional.cross_entropy
    if not is_reference(ref):
        raise ConfigError(f"model.loss={ref!r} is not allowed: use cross_entropy or a plug-in (package.module:name)")
    return _summable(callable_plugin("model.loss", ref, 2, LOSS_RULE))


def _summable(fn: Callable) -> Callable:
    """A user loss ``(logits, labels) -> mean`` with the ``reduction="sum"`` that evaluation
    asks for (the batch mean times the batch size)."""

    def loss(logits, labels, reduction: str = "mean"):
        value = fn(logits, labels)
        return value * labels.shape[0] if reduction == "sum" else value

    return loss


# ---- algorithms ---------------------------------------------------------------------------
def check_algorithm(key: str, ref: str, cls: Any) -> type:
    """Raise ConfigError unless ``cls`` is a usable algorithm class; return it.

    Rules: a subclass of ``FedAlgorithm`` with its own string ``name`` (no ``:``), a
    dataclass ``Hparams``, and at least one hook overridden (else it is FedAvg under
    another name).
    """
    import dataclasses

    from fedtorch.algorithms.base import FedAlgorithm

    if not (isinstance(cls, type) and issubclass(cls, FedAlgorithm)) or cls is FedAlgorithm:
        raise ConfigError(f"{key}={ref!r} is not a subclass of fedtorch.algorithms.FedAlgorithm")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name or ":" in name:
        raise ConfigError(f"{key}={ref!r}: the class must set its own name = '<algorithm name>' (no ':')")
    if not dataclasses.is_dataclass(cls.Hparams):
        raise ConfigError(f"{key}={ref!r}: Hparams must be a dataclass")
    if not any(getattr(cls, h) is not getattr(FedAlgorithm, h) for h in hooks()):
        raise ConfigError(f"{key}={ref!r} overrides no hook of FedAlgorithm ({', '.join(hooks())}); "
                          "it would be FedAvg under another name")
    return cls


def hooks() -> list[str]:
    """The overridable hooks of ``FedAlgorithm`` (its public methods)."""
    from fedtorch.algorithms.base import FedAlgorithm

    return [k for k, v in vars(FedAlgorithm).items()
            if not k.startswith("_") and (inspect.isfunction(v) or isinstance(v, staticmethod))]


def module_algorithms(module) -> list[type]:
    """Algorithm classes defined (not imported) in ``module``."""
    from fedtorch.algorithms.base import FedAlgorithm

    return [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, FedAlgorithm)
            and v.__module__ == module.__name__ and "name" in v.__dict__]


def experiment_plugins(path: Path) -> tuple[dict, dict[str, str]]:
    """Load an experiment's ``config.py``; register its algorithm classes (for this process).

    Returns:
        ``(CONFIG, {key: reference})``: the raw CONFIG dict and the absolute reference of
        each of ``MODEL``, ``DATASET``, ``PARTITION``, ``LOSS`` it defines, under the key
        it sets (:data:`EXPERIMENT_NAMES`).

    Raises:
        ConfigError: the file cannot be loaded, no CONFIG dict, or a bad algorithm class.
    """
    from fedtorch.algorithms.registry import register_plugin

    path = Path(path).resolve()
    module = load_file(path)
    raw = getattr(module, "CONFIG", None)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must define a dict named CONFIG")
    for cls in module_algorithms(module):
        ref = f"{path}:{cls.__qualname__}"
        check_algorithm("algorithm", ref, cls)
        try:
            register_plugin(cls)
        except ValueError as e:
            raise ConfigError(f"{ref}: {e}") from None
    refs = {key: f"{path}:{attr}" for attr, key in EXPERIMENT_NAMES.items() if hasattr(module, attr)}
    return raw, refs
