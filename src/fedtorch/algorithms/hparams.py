"""Validation of hyper-parameters: one error format for every algorithm and optimiser."""

from __future__ import annotations


def check(ok: bool, key: str, value, rule: str, section: str = "algorithm") -> None:
    """Raise ``ValueError("<section>.<key>=<value> is not allowed: <rule>")`` unless ``ok``.

    ``Hparams.__post_init__`` (``section="algorithm"``) and the server optimisers
    (``section="server"``) use it; the config layer turns the error into a ConfigError.
    """
    if not ok:
        raise ValueError(f"{section}.{key}={value!r} is not allowed: {rule}")
