"""Run directories: creating one, reading its config back, and the one rule for resuming it.

:func:`new_run_dir` writes ``config.yaml`` and ``run.json``
(:mod:`fedtorch.experiment.run_files`); :func:`load_run_config` reads them back for
``--resume``; :func:`check_resumable` decides whether a run can continue, and
:func:`interrupted_hint` tells the user. Also importable from
:mod:`fedtorch.experiment.runner`.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import fedtorch
from fedtorch.experiment.checkpoint import CHECKPOINT_NAME, PREV_CHECKPOINT_NAME
from fedtorch.experiment.errors import ConfigError
from fedtorch.experiment.paths import experiment_output_dir, make_unique_dir, timestamp
from fedtorch.experiment.run_files import CONFIG_NAME, check_config_digest, read_run_meta, write_run_files


def new_run_dir(cfg: DictConfig, experiment: Path | None, parent: Path | None = None, name: str | None = None) -> Path:
    """Create a fresh run directory and write the resolved ``config.yaml`` into it.

    Default location: ``<output_dir>/<DATASET>/<folder>/<algorithm>_seed<seed>_<time>``
    (``parent/name`` when given); ``-1``, ``-2``, ... is appended when the name is taken.
    """
    stamp = timestamp()
    if parent is None:
        parent = experiment_output_dir(cfg.output_dir, experiment)
    run_dir = make_unique_dir(parent, name or f"{cfg.algorithm.name}_seed{cfg.seed}_{stamp}")
    meta = {
        "experiment": str(experiment) if experiment else None, "created": stamp, "fedtorch": fedtorch.__version__,
        "torch": torch.__version__, "python": platform.python_version(),
        "seed": cfg.seed, "data_seed": cfg.data.seed,
    }
    write_run_files(run_dir, OmegaConf.to_yaml(cfg), meta)  # run.json also records config.yaml's sha256
    return run_dir


def load_run_config(run_dir: Path) -> DictConfig:
    """The resolved config saved in a run directory, validated and checked against
    ``run.json`` (:mod:`fedtorch.experiment.run_files`).

    Raises:
        ConfigError: not a run directory; ``run.json`` missing, damaged or written by another
            fedtorch version; ``config.yaml`` not valid YAML, with a key that fails
            validation (the message names the file and the key), or not the file the run
            started with (sha256 in ``run.json``).
    """
    from fedtorch.experiment.config import from_dict, validate

    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    meta = read_run_meta(run_dir)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as e:
        problem = " ".join(str(e).split())
        raise ConfigError(f"{path} is not a valid config ({type(e).__name__}: {problem}); "
                          "the run directory is damaged: restore the file, or start the run again") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} is not a valid config (not a mapping of keys); restore the file, or start the run again")
    try:
        cfg = validate(from_dict(raw, where=str(path)))
    except ConfigError as e:
        raise ConfigError(str(e) if str(path) in str(e) else f"{path}: {e}; fix it, or start the run again") from None
    check_config_digest(run_dir, meta)
    return cfg


ASYNC_NOT_RESUMABLE = ("runs with federation.clock=asyncio or wall cannot be resumed (their clients in flight are "
                       "asyncio tasks or worker processes, not checkpointed; federation.clock=simulated runs are)")


def check_resumable(cfg: DictConfig, run_dir: Path) -> None:
    """The one rule for ``--resume``: a run started by this fedtorch version (``run.json``)
    with a checkpoint (``checkpoint.pt`` or ``checkpoint.prev.pt``; which one verifies is
    decided when it is read); an asynchronous run only with the simulated clock. Needs no
    data, so the CLI can call it before :func:`prepare`.

    Raises:
        ConfigError: an asyncio-clock run (:data:`ASYNC_NOT_RESUMABLE`), ``run.json``
            missing, damaged or of another fedtorch version, or no checkpoint yet.
    """
    if cfg.federation.mode == "async" and cfg.federation.clock != "simulated":
        raise ConfigError(f"{run_dir}: {ASYNC_NOT_RESUMABLE}; run it again")
    read_run_meta(run_dir)
    if not any((Path(run_dir) / name).is_file() for name in (CHECKPOINT_NAME, PREV_CHECKPOINT_NAME)):
        raise ConfigError(f"{run_dir} has no {CHECKPOINT_NAME}: nothing to resume (the run stopped before its first checkpoint); run it again")


def interrupted_hint(cfg: DictConfig, run_dir: Path) -> str:
    """What to tell a user whose run was interrupted: how to resume it, or why it cannot be."""
    if cfg.federation.mode == "async" and cfg.federation.clock != "simulated":
        return f"interrupted; {ASYNC_NOT_RESUMABLE}; start it again; partial outputs in {run_dir}"
    return f"interrupted; continue with: fedtorch run --resume {run_dir}"
