"""The error users see for bad input: one line naming the key, the value and what is allowed."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """Bad configuration or command-line input. The CLI prints it and exits with code 2."""


def check_choice(key: str, value: Any, allowed) -> None:
    """ConfigError ``"<key>: unknown value ...; allowed: ..."`` unless ``value in allowed``."""
    if value not in allowed:
        raise ConfigError(f"{key}: unknown value {value!r}; allowed: {', '.join(sorted(allowed))}")


def check_rule(ok: bool, key: str, value: Any, rule: str) -> None:
    """ConfigError ``"<key>=<value> is not allowed: <rule>"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {rule}")
