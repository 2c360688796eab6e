"""The configuration keys as ``fedtorch run --help`` lists them: every dotted key with its
default (:func:`flat_defaults`) and its meaning (:func:`key_meanings`, read from the
comments of :mod:`fedtorch.experiment.schema`, the one place a key's meaning is written)."""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import OmegaConf

from fedtorch.experiment.config import defaults
from fedtorch.experiment.schema import Config


def flat_defaults() -> list[tuple[str, Any]]:
    """``[(dotted key, default)]`` for ``fedtorch run --help``."""
    out: list[tuple[str, Any]] = []

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict) and k != "algorithm":
                walk(v, f"{prefix}{k}.")
            else:
                out.append((f"{prefix}{k}", v))

    walk(OmegaConf.to_container(defaults()), "")
    return out


def key_meanings() -> dict[str, str]:
    """``{dotted key: meaning}`` for every key of :func:`flat_defaults`, read from the
    trailing ``# ...`` comment of each field in :mod:`fedtorch.experiment.schema` (the one
    place a key's meaning is written; ``fedtorch run --help`` shows it beside the default).
    A field without a comment maps to ``""``."""
    import inspect
    import io
    import tokenize
    import typing

    from fedtorch.experiment import schema

    def comments(cls: type) -> dict[str, str]:
        # field name -> the comment ending its line: a logical line `name: type = default  # text`
        out, line = {}, []
        for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
            if tok.type in (tokenize.NEWLINE, tokenize.NL):
                names = [t for t in line if t.type != tokenize.COMMENT]
                if len(names) > 2 and names[0].type == tokenize.NAME and names[1].string == ":" and line[-1].type == tokenize.COMMENT:
                    out[names[0].string] = line[-1].string.lstrip("#").strip()
                line = []
            elif tok.type not in (tokenize.INDENT, tokenize.DEDENT):
                line.append(tok)
        return out

    meanings: dict[str, str] = {}

    def walk(cls: type, prefix: str) -> None:
        text, hints = comments(cls), typing.get_type_hints(cls, vars(schema))
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                meanings[f"{prefix}{f.name}"] = text.get(f.name, "")

    walk(Config, "")
    return meanings
