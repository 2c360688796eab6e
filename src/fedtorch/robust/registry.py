"""Registries of validated constructors: ``AGGREGATORS`` (``robust.aggregator``) and ``ATTACKS``
(``attack.name``). ``make_aggregator`` / ``make_attack`` build one from a name and keyword
parameters, raising ValueError for an unknown name or parameter and, through the dataclass's
``__post_init__``, for a bad value."""

from __future__ import annotations

import dataclasses

from fedtorch.robust.attacks import GaussianNoise, LabelFlip, Scale, SignFlip
from fedtorch.robust.base import Mean
from fedtorch.robust.bulyan import Bulyan
from fedtorch.robust.clipping import CenteredClipping
from fedtorch.robust.coordinate import Median, TrimmedMean
from fedtorch.robust.krum import Krum, MultiKrum

AGGREGATORS: dict[str, type] = {
    "mean": Mean,
    "krum": Krum,
    "multi_krum": MultiKrum,
    "median": Median,
    "trimmed_mean": TrimmedMean,
    "bulyan": Bulyan,
    "centered_clipping": CenteredClipping,
}

ATTACKS: dict[str, type] = {
    "sign_flip": SignFlip,
    "scale": Scale,
    "gaussian": GaussianNoise,
    "label_flip": LabelFlip,
}


def _make(registry: dict[str, type], section: str, key: str, name: str, params: dict):
    if name not in registry:
        raise ValueError(f"{section}.{key}={name!r} is not allowed: use one of {', '.join(sorted(registry))}")
    cls = registry[name]
    allowed = [f.name for f in dataclasses.fields(cls)]
    for param in params:
        if param not in allowed:
            raise ValueError(
                f"{section}.{param} is not a parameter of {name!r}: allowed {', '.join(allowed) or 'none'}"
            )
    return cls(**params)


def make_aggregator(name: str, **params):
    """``AGGREGATORS[name](**params)``; ValueError naming ``robust.<key>`` on bad input."""
    return _make(AGGREGATORS, "robust", "aggregator", name, params)


def make_attack(name: str, **params):
    """``ATTACKS[name](**params)``; ValueError naming ``attack.<key>`` on bad input."""
    return _make(ATTACKS, "attack", "name", name, params)
