"""fedtorch: federated-learning research and simulation on PyTorch.

The package is organised along three independent axes (see ``docs/design.md``):
*what* is computed (:mod:`fedtorch.algorithms`), *where* local training runs
(:mod:`fedtorch.execution`) and *when* updates meet (:mod:`fedtorch.federation`).

From Python (``docs/api.md``)::

    import fedtorch
    result = fedtorch.run("experiments/FashionMNIST/A0d5C100", rounds=5, **{"client.lr": 0.05})

``fedtorch.run``, ``fedtorch.resume`` and ``fedtorch.RunResult`` (:mod:`fedtorch.api`) are
imported on first use, so ``import fedtorch`` stays light; bad input raises
:class:`fedtorch.ConfigError`.
"""

__version__ = "0.1.0"

from fedtorch.experiment.errors import ConfigError  # noqa: E402  (light: no torch)

__all__ = ["ConfigError", "RunResult", "__version__", "resume", "run"]

_API = ("run", "resume", "RunResult")


def __getattr__(name: str):
    if name in _API:
        from fedtorch import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedtorch' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
