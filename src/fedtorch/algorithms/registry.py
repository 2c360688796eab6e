"""Algorithms by name: ``register`` decorates a class, ``get_algorithm`` finds it.

Names are matched case-insensitively, so the original fedtorch spellings (``FedAVG``,
``FedPROX``, ``FedADAM``, ``SCAFFNEW``, ``DeltaSGD``, ...) work as they are; a class may
add other spellings in ``aliases`` (``delta-sgd``, ``q-ffl``, ...).

Seed spellings that mean something else here: :data:`SEED_SPELLINGS` maps an exact-case
spelling of the seed framework to a one-line note naming what fedtorch runs for it and
what to write for the seed's method. Looking such a name up still resolves it
case-insensitively (old configs keep running the same way), but prints the note to
stderr, once per spelling and process. Today: ``FedAVGM``, which in the seed framework
was client-level momentum (fedtorch's ``fedcm``) and here selects ``fedavgm``, server
momentum (Hsu et al. 2019).
"""

from __future__ import annotations

import sys

_REGISTRY: dict[str, type] = {}
_ALIASES: dict[str, str] = {}

SEED_SPELLINGS: dict[str, str] = {
    "FedAVGM": (
        "note: algorithm 'FedAVGM' runs fedavgm (server momentum, Hsu et al. 2019); the seed framework's "
        "FedAVGM was client-level momentum, which is fedcm here: write algorithm.name=fedcm for that method, "
        "or fedavgm to silence this note"
    ),
}
_NOTED: set[str] = set()


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


def register_plugin(cls: type) -> type:
    """Register a user's algorithm class (an experiment's ``config.py``, a dotted path, the
    Python API's ``algorithm=``) under ``cls.name`` for this process.

    It may replace an earlier user class of the same name (another experiment folder, a
    reloaded ``config.py``) but never a built-in algorithm or alias.

    Raises:
        ValueError: the name or an alias is a built-in algorithm's.
    """
    for key in (cls.name.lower(), *(a.lower() for a in getattr(cls, "aliases", ()))):
        owner = _ALIASES.get(key, key if key in _REGISTRY else None)
        if owner is not None and is_builtin(_REGISTRY[owner]) and not _same_class(_REGISTRY[owner], cls):
            raise ValueError(f"algorithm name {key!r} of {cls.__name__} is a built-in algorithm's ({owner!r}); "
                             "give the class another name")
    for key in [k for k, v in _ALIASES.items() if v == cls.name.lower()]:
        del _ALIASES[key]
    _REGISTRY.pop(cls.name.lower(), None)
    return register(cls)


def is_builtin(cls: type) -> bool:
    """Whether ``cls`` ships with fedtorch (not a user's plug-in)."""
    return cls.__module__.startswith("fedtorch.")


def _same_class(a: type, b: type) -> bool:
    """The same class, or the same definition imported again (a module reload)."""
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def get_algorithm(name: str) -> type:
    """The algorithm class registered as ``name`` (case-insensitive, aliases accepted).

    A spelling in :data:`SEED_SPELLINGS` also prints its note to stderr (once per process).

    Raises:
        KeyError: unknown name; the message lists the registered algorithms.
    """
    if name in SEED_SPELLINGS and name not in _NOTED:
        _NOTED.add(name)
        print(SEED_SPELLINGS[name], file=sys.stderr)
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise KeyError(f"unknown algorithm {name!r}; available: {', '.join(available_algorithms())}")
    return _REGISTRY[key]


def available_algorithms() -> list[str]:
    """Sorted names of all registered algorithms (the user plug-ins registered in this
    process included)."""
    return sorted(_REGISTRY)


def builtin_algorithms() -> list[str]:
    """Sorted names of the algorithms fedtorch ships (:func:`is_builtin`)."""
    return sorted(n for n, cls in _REGISTRY.items() if is_builtin(cls))
