"""The ``algorithm`` section of a configuration: which algorithm class runs (a registered
name or a plug-in reference, :mod:`fedtorch.experiment.plugins`) and its frozen ``Hparams``
built from ``algorithm.*``."""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedtorch.algorithms import available_algorithms, get_algorithm
from fedtorch.algorithms.registry import is_builtin, register_plugin
from fedtorch.experiment import plugins
from fedtorch.experiment.errors import ConfigError


def algorithm_hparams(cfg: DictConfig):
    """The chosen algorithm's class and its frozen ``Hparams`` built from ``algorithm.*``.

    Raises:
        ConfigError: unknown algorithm, unknown hyper-parameter, wrong type, or a value
            its ``Hparams`` rejects.
    """
    section = dict(cfg.algorithm)
    name = section.pop("name", None)
    source = section.pop("source", None)
    if not isinstance(name, str):
        raise ConfigError(f"algorithm.name must be a string; available: {', '.join(available_algorithms())}")
    cls = _algorithm_class(name, source)
    allowed = {f.name: f for f in dataclasses.fields(cls.Hparams)}
    for key in section:
        if key not in allowed:
            raise ConfigError(
                f"unknown key 'algorithm.{key}' for algorithm {cls.name!r}; allowed: {', '.join(sorted(allowed)) or '(none)'}"
            )
    try:
        typed = OmegaConf.merge(OmegaConf.structured(cls.Hparams), section)
        return cls, cls.Hparams(**OmegaConf.to_container(typed))
    except OmegaConfBaseException as e:
        raise ConfigError(f"algorithm.{getattr(e, 'full_key', '?')}: {str(e.msg).splitlines()[0]}") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _algorithm_class(name: str, source: str | None) -> type:
    """The class of ``algorithm.name`` (a registered name or a plug-in reference) and
    ``algorithm.source`` (the reference of a plug-in, written by :func:`validate`)."""
    if plugins.is_reference(name):
        source, key = name, "algorithm.name"
    elif source is not None:
        key = "algorithm.source"
        try:  # registered in this process (config.py, fedtorch.run(algorithm=...)): no import needed
            known = get_algorithm(name)
            if plugins.reference(known) == source:
                return known
        except KeyError:
            pass
    else:
        try:
            return get_algorithm(name)
        except KeyError:
            raise ConfigError(f"algorithm.name: unknown algorithm {name!r}; available: {', '.join(available_algorithms())} "
                              "(or a plug-in: package.module:Class)") from None
    if not isinstance(source, str):
        raise ConfigError(f"algorithm.source={source!r} must be a plug-in reference package.module:Class")
    cls = plugins.check_algorithm(key, source, plugins.resolve(key, source))
    if key == "algorithm.source" and cls.name.lower() != name.lower():
        raise ConfigError(f"algorithm.source={source!r} is algorithm {cls.name!r}, not algorithm.name={name!r}")
    try:
        register_plugin(cls)
    except ValueError as e:
        raise ConfigError(f"{key}={source!r}: {e}") from None
    return cls


def algorithm_entry(cls: type) -> dict[str, str]:
    """``{"name": ...}`` of a resolved config's algorithm section, plus ``"source"`` (the
    reference :func:`algorithm_hparams` imports it from in a fresh process) for a plug-in."""
    return {"name": cls.name} if is_builtin(cls) else {"name": cls.name, "source": plugins.reference(cls)}
