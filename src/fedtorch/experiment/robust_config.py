"""The ``robust`` and ``attack`` sections: the server's robust aggregation rule and the
simulated malicious clients (:mod:`fedtorch.robust`, wired by
:mod:`fedtorch.federation.byzantine`)."""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig

from fedtorch.experiment.errors import ConfigError
from fedtorch.robust import AGGREGATORS, ATTACKS


def _build(registry: dict, section: DictConfig, name_key: str, name: str, **fixed):
    if name not in registry:
        raise ConfigError(f"{name_key}={name!r} is not allowed: null or one of {', '.join(registry)}")
    cls = registry[name]
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in section.items() if k in names}, **{k: v for k, v in fixed.items() if k in names})
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_aggregator(cfg: DictConfig):
    """The rule of ``robust.aggregator`` with its ``robust.*`` parameters, or None.

    Raises:
        ConfigError: an unknown rule, a bad parameter, or ``federation.mode=async`` (the
            asynchronous server steps do not run it).
    """
    name = cfg.robust.aggregator
    if name is None:
        return None
    if cfg.federation.mode == "async":
        raise ConfigError(f"robust.aggregator={name!r} is not supported with federation.mode=async; use federation.mode=sync")
    return _build(AGGREGATORS, cfg.robust, "robust.aggregator", name)


def build_attack(cfg: DictConfig, num_classes: int = 10):
    """The attack of ``attack.name`` with its ``attack.*`` parameters, or None.

    Raises:
        ConfigError: an unknown attack, a bad parameter, or ``federation.mode=async``.
    """
    name = cfg.attack.name
    if name is None:
        return None
    if cfg.federation.mode == "async":
        raise ConfigError(f"attack.name={name!r} is not supported with federation.mode=async; use federation.mode=sync")
    if not 0 <= cfg.attack.fraction <= 1:
        raise ConfigError(f"attack.fraction={cfg.attack.fraction!r} is not allowed: must be in [0, 1]")
    section = {k: v for k, v in cfg.attack.items() if k not in ("name", "fraction")}
    return _build(ATTACKS, DictConfig(section), "attack.name", name, num_classes=num_classes)
