"""The ``compression`` section: which compressor of :data:`fedtorch.compression.COMPRESSORS`
compresses the clients' updates (``compression.method``) and its parameters."""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig

from fedtorch.compression import COMPRESSORS
from fedtorch.experiment.errors import ConfigError


def build_compressor(cfg: DictConfig):
    """The compressor of ``compression.*``, or None when ``compression.method`` is null.

    Each method takes the keys its constructor has (``topk``: density, error_feedback;
    ``dgc``: density, momentum, clip_norm, warmup_rounds; ``qsgd``: levels, encoding;
    ``sign``: error_feedback); the others are ignored.

    Raises:
        ConfigError: an unknown method, a parameter out of range, or compression with
            ``federation.mode=async`` (not supported: the asynchronous server steps do
            not run the uplink transform).
    """
    section = cfg.compression
    if section.method is None:
        return None
    if section.method not in COMPRESSORS:
        raise ConfigError(f"compression.method={section.method!r} is not allowed: null or one of {', '.join(COMPRESSORS)}")
    if cfg.federation.mode == "async":
        raise ConfigError(f"compression.method={section.method!r} is not supported with federation.mode=async "
                          "(the asynchronous server steps do not compress uploads yet); use federation.mode=sync")
    cls = COMPRESSORS[section.method]
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in section.items() if k in names})
    except ValueError as e:
        raise ConfigError(str(e)) from None
