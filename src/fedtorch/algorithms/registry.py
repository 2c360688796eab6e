"""Algorithms by name: ``register`` decorates a class, ``get_algorithm`` finds it.

Names are matched case-insensitively, so the original fedtorch spellings (``FedAVG``,
``FedPROX``, ``FedADAM``, ``SCAFFNEW``, ``DeltaSGD``, ...) work as they are; a class may
add other spellings in ``aliases`` (``delta-sgd``, ``q-ffl``, ...).
"""

from __future__ import annotations

_REGISTRY: dict[str, type] = {}
_ALIASES: dict[str, str] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` available under ``cls.name`` (and ``cls.aliases``).

    Raises:
        ValueError: the name or an alias is already taken by another algorithm.
    """
    name = cls.name.lower()
    for key in (name, *(a.lower() for a in getattr(cls, "aliases", ()))):
        owner = _ALIASES.get(key, key if key in _REGISTRY else None)
        if owner is not None and not _same_class(_REGISTRY[owner], cls):
            raise ValueError(f"algorithm name {key!r} of {cls.__name__} is already taken by {owner!r}")
    _REGISTRY[name] = cls
    for alias in getattr(cls, "aliases", ()):
        if alias.lower() != name:
            _ALIASES[alias.lower()] = name
    return cls


def _same_class(a: type, b: type) -> bool:
    """The same class, or the same definition imported again (a module reload)."""
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def get_algorithm(name: str) -> type:
    """The algorithm class registered as ``name`` (case-insensitive, aliases accepted).

    Raises:
        KeyError: unknown name; the message lists the registered algorithms.
    """
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise KeyError(f"unknown algorithm {name!r}; available: {', '.join(available_algorithms())}")
    return _REGISTRY[key]


def available_algorithms() -> list[str]:
    """Sorted names of all registered algorithms."""
    return sorted(_REGISTRY)
