"""The Python API: run an experiment from a script or a notebook.

    import fedtorch
    result = fedtorch.run("experiments/FashionMNIST/A0d5C100", rounds=5, **{"client.lr": 0.05})
    result.metrics[-1]["test_accuracy"], result.model, result.run_dir
    result = fedtorch.resume(run_dir)

``fedtorch run`` and ``fedtorch run --resume`` are thin layers over the same functions
(:func:`configure`, :func:`start`, :func:`finish`, :func:`prepare_resume`), so a config
gives the same validation, the same run directory and the same model bit for bit from
either. The API prints nothing: where neither the config nor an override sets
``logging.progress`` to something other than ``auto``, it runs with ``none`` (the CLI keeps
``auto``). Warnings (non-finite client updates, a checkpoint fallback on resume) still go
to stderr. ``docs/api.md`` is the user's guide.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fedtorch.experiment.checkpoint import CHECKPOINT_NAME, MODEL_NAME, PREV_CHECKPOINT_NAME, model_state, read_checkpoint
from fedtorch.experiment.config import apply_overrides, from_dict, load_experiment, parse_override, validate
from fedtorch.experiment.errors import ConfigError
from fedtorch.experiment.logfiles import read_jsonl
from fedtorch.experiment import runner  # called as runner.<name>: one seam for tests that replace a step
from fedtorch.experiment.runner import RESULT_NAME, Prepared
from fedtorch.models import build_model

__all__ = ["RunResult", "run", "resume", "override_text"]

PANDAS_MISSING = "RunResult.dataframe() needs pandas, which is not installed: pip install pandas"


@dataclass
class RunResult:
    """A finished (or diverged) run, read back from its run directory.

    Attributes:
        metrics: one dict per round (asynchronous runs: per server version), the rows of
            ``metrics.jsonl`` (``round``, ``train_loss``, ``test_loss``, ``test_accuracy``,
            ``wall_seconds``, ... ; README "What the first command does").
        model: the final global model, an ``nn.Module`` built by
            ``fedtorch.models.build_model(config["model"]["name"], input_shape, num_classes)``
            on the CPU in eval mode, holding ``model.pt``; for a diverged run (no ``model.pt``)
            the last good checkpoint's model (the initial model if it diverged in round 1).
        run_dir: the run directory.
        config: the resolved config (every key, the algorithm's defaults filled in) as a
            plain dict, as saved in ``config.yaml``.
        result: the ``result.json`` dict (final accuracy, rounds, seconds per round, ...).
        status: ``"completed"`` or ``"diverged"`` (then ``result`` has ``diverged_at``,
            ``reason`` and ``hint``).
    """

    metrics: list[dict]
    model: nn.Module
    run_dir: Path
    config: dict
    result: dict
    status: str

    def dataframe(self):
        """The metrics as a ``pandas.DataFrame``, one row per round.

        Raises:
            ImportError: pandas is not installed (the message names ``pip install pandas``).
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(PANDAS_MISSING) from None
        return pd.DataFrame(self.metrics)

    @property
    def df(self):
        """Same as :meth:`dataframe`."""
        return self.dataframe()


def _plain(key: str, value: Any) -> Any:
    """``value`` as YAML-representable builtins (Path -> str, tuple -> list, numpy scalars -> int/float)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(key, v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(key, v) for k, v in value.items()}
    raise ConfigError(f"{key}: value {value!r} of type {type(value).__name__} cannot be set; "
                      "use str, int, float, bool, None, or a list or dict of them")


def override_text(key: str, value: Any) -> str:
    """The command-line override ``key=value`` that sets ``key`` to the Python ``value``.

    The value is written as YAML (what the CLI parses), and the text is checked to parse
    back to the same value, so ``fedtorch.run(..., **{key: value})`` sets exactly what
    ``fedtorch run ... key=<text>`` sets: ``0.05 -> "0.05"``, ``True -> "true"``,
    ``None -> "null"``, ``[1, 2] -> "[1, 2]"``, the string ``"0.5" -> "'0.5'"``.

    Raises:
        ConfigError: an empty key or one holding ``=``, or a value of another type.
    """
    if not key or "=" in key:
        raise ConfigError(f"override key {key!r} is not allowed: use a dotted key such as client.lr")
    plain = _plain(key, value)
    body = yaml.safe_dump(plain, default_flow_style=True, width=math.inf, allow_unicode=True)
    body = body.removesuffix("\n...\n").rstrip("\n")
    text = f"{key}={body}"
    back = parse_override(text)[1]
    if back != plain and not (isinstance(plain, float) and math.isnan(plain) and math.isnan(back)):
        raise ConfigError(f"{key}: value {value!r} cannot be written as an override")  # a guard: YAML round-trips these
    return text


def configure(experiment: str | Path | Mapping, overrides: Sequence[str], quiet: bool = True) -> tuple[DictConfig, Path | None]:
    """The validated config of ``experiment`` with ``overrides`` (``key=value`` texts, as on
    the command line) applied, and its experiment folder (None for a dict).

    Args:
        experiment: an experiment folder holding ``config.py`` (str or Path), or a config
            dict of the same shape as a ``CONFIG``.
        overrides: ``key.sub=value`` strings (:func:`override_text` writes them from values).
        quiet: the API's rule: ``logging.progress`` ``auto`` becomes ``none`` unless an
            override sets ``logging.progress``.

    Raises:
        ConfigError: no such folder or ``config.py``, unknown keys, bad types or values.
    """
    if isinstance(experiment, Mapping):
        base, folder = from_dict(dict(experiment), where="the config dict"), None
    elif isinstance(experiment, (str, Path)):
        base, folder = load_experiment(experiment)
    else:
        raise ConfigError(f"experiment={experiment!r} is not allowed: give an experiment folder (str or Path) or a config dict")
    cfg = apply_overrides(base, list(overrides))
    if quiet and cfg.logging.progress == "auto" and not any(parse_override(o)[0] == "logging.progress" for o in overrides):
        cfg.logging.progress = "none"
    return validate(cfg), folder


def start(cfg: DictConfig, folder: Path | None) -> tuple[Prepared, Path]:
    """Load and split the data, build the run (:func:`~fedtorch.experiment.runner.prepare`),
    then create its run directory (``<output_dir>/<DATASET>/<folder>/...`` for a folder,
    ``<output_dir>/...`` for a dict). Data and model errors surface before the directory exists.

    Raises:
        ConfigError: missing data, an impossible split, a model that does not fit, no CUDA.
        OSError: the run directory cannot be created.
    """
    prep = runner.prepare(cfg)
    return prep, runner.new_run_dir(cfg, folder)


def finish(prep: Prepared, run_dir: Path, resume: bool = False) -> RunResult:
    """Run (``resume``: continue) the federation loop into ``run_dir`` and read the result back.

    Raises:
        KeyboardInterrupt: passed on, with a note saying how to resume the run.
        ConfigError: ``resume`` of a run that cannot be resumed, or a damaged checkpoint.
    """
    try:
        runner.execute(prep, run_dir, resume=resume)
    except KeyboardInterrupt as e:
        e.add_note(f"{runner.interrupted_hint(prep.cfg, run_dir)} (or fedtorch.resume({str(run_dir)!r}))")
        raise
    return load_result(prep, run_dir)


def load_result(prep: Prepared, run_dir: Path) -> RunResult:
    """The :class:`RunResult` of a run directory holding ``result.json``; ``prep`` gives the
    model's input shape, classes and parameter layout."""
    import json

    run_dir = Path(run_dir)
    result = json.loads((run_dir / RESULT_NAME).read_text())
    cfg = prep.cfg
    ds = prep.data.data
    model = build_model(cfg.model.name, ds.input_shape, ds.num_classes)
    replica = prep.executor.replica
    if (run_dir / MODEL_NAME).is_file():
        model.load_state_dict(torch.load(run_dir / MODEL_NAME, weights_only=True))
    elif any((run_dir / name).is_file() for name in (CHECKPOINT_NAME, PREV_CHECKPOINT_NAME)):
        last = read_checkpoint(run_dir, replica.layout).server  # diverged: the last good round's model
        model.load_state_dict(model_state(replica, last.x, last.buffers))
    else:  # diverged in round 1, before any checkpoint: the initial model
        model.load_state_dict(model_state(replica, prep.x0, prep.buffers0))
    return RunResult(
        metrics=read_jsonl(run_dir / "metrics.jsonl"), model=model.eval(), run_dir=run_dir,
        config=OmegaConf.to_container(cfg, resolve=True), result=result, status=result.get("status", "completed"),
    )


def plugin_overrides(model=None, dataset=None, partition=None, loss=None, algorithm=None) -> list[str]:
    """The ``key=value`` overrides that make this run use the given plug-in objects
    (:mod:`fedtorch.experiment.plugins`), each made resolvable in this process.

    A string is taken as the key's value (a built-in name or a reference
    ``package.module:Name``); a ``dataset`` pair ``(train_dataset, test_dataset)`` becomes the
    callable :func:`~fedtorch.experiment.dataset_plugins.dataset_pair` returning it; an object is
    recorded as its ``module:qualname``, which a fresh
    process (``fedtorch.resume``, ``fedtorch run --resume``) can import only when it is
    defined at the top level of an importable module or file.

    Raises:
        ConfigError: an algorithm that is not a usable ``FedAlgorithm`` subclass; a
            ``dataset`` tuple or list that is not two dataset objects.
    """
    from fedtorch.algorithms.registry import register_plugin
    from fedtorch.experiment import dataset_plugins, plugins

    if isinstance(dataset, (tuple, list)):
        dataset = dataset_plugins.dataset_pair(dataset)
    out = []
    for key, value in (("model.name", model), ("data.dataset", dataset), ("data.partition", partition),
                       ("model.loss", loss)):
        if value is None:
            continue
        out.append(override_text(key, value if isinstance(value, str) else plugins.provide(value)))
    if algorithm is not None and not isinstance(algorithm, str):
        cls = plugins.check_algorithm("algorithm", plugins.reference(algorithm), algorithm)
        try:
            register_plugin(cls)
        except ValueError as e:
            raise ConfigError(f"algorithm={plugins.reference(cls)!r}: {e}") from None
        plugins.provide(cls)
        algorithm = cls.name
    if algorithm is not None:
        out.append(override_text("algorithm.name", algorithm))
    return out


def run(experiment: str | Path | Mapping, rounds: int | None = None, output_dir: str | Path | None = None, *,
        model=None, dataset=None, partition=None, loss=None, algorithm=None, **overrides: Any) -> RunResult:
    """Train an experiment, as ``fedtorch run`` does, and return its result.

    Args:
        experiment: an experiment folder (``experiments/<DATASET>/<folder>`` holding
            ``config.py``; the run directory goes under ``<output_dir>/<DATASET>/<folder>/``),
            or a config dict shaped like a ``CONFIG`` (the run directory goes under
            ``<output_dir>/``).
        rounds: sets ``rounds`` (T, communication rounds) when given.
        output_dir: sets ``output_dir`` when given.
        model, dataset, partition, loss, algorithm: plug-ins (``docs/api.md`` "Your own
            model, data and algorithm"): a model factory ``(input_shape, num_classes) ->
            nn.Module``, a dataset callable ``() -> (train_x, train_y, test_x, test_y)`` or
            ``() -> (train_dataset, test_dataset)`` or that pair of datasets itself, a
            partition ``(targets, num_clients, rng) -> {client: indices}``, a loss like
            ``F.cross_entropy``, a ``FedAlgorithm`` subclass; or a reference string
            ``package.module:Name`` (:func:`plugin_overrides`).
        **overrides: dotted keys with Python values, applied as the command line's
            ``key=value`` (:func:`override_text`): ``**{"client.lr": 0.05, "algorithm.name":
            "fedprox", "algorithm.mu": 0.01}``, ``seed=3``. A string holding a comma is
            refused as on the command line (there it means a sweep).

    Returns:
        The :class:`RunResult`; a diverged run returns with ``status="diverged"``.

    Raises:
        ConfigError: bad input (the message the CLI prints after ``error:``), missing data.
        OSError: a run file cannot be created or written.
        KeyboardInterrupt: the run was interrupted (resume it with :func:`resume`).
    """
    named = [("rounds", rounds), ("output_dir", output_dir)]
    texts = [override_text(k, v) for k, v in named if v is not None]
    texts += plugin_overrides(model, dataset, partition, loss, algorithm)
    texts += [override_text(k, v) for k, v in overrides.items()]
    cfg, folder = configure(experiment, texts)
    prep, run_dir = start(cfg, folder)
    return finish(prep, run_dir)


def is_complete(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds ``result.json`` (the run finished or diverged)."""
    return (Path(run_dir) / RESULT_NAME).is_file()


def prepare_resume(cfg: DictConfig, run_dir: Path) -> Prepared:
    """Check that ``run_dir`` can be resumed (needs no data), then prepare its run.

    Raises:
        ConfigError: :func:`~fedtorch.experiment.run_dirs.check_resumable` refuses, or data errors.
    """
    runner.check_resumable(cfg, run_dir)
    return runner.prepare(cfg)


def resume(run_dir: str | Path) -> RunResult:
    """Continue a killed or interrupted run from its checkpoint, as ``fedtorch run --resume``
    does (its ``config.yaml`` unchanged); the result is bit-identical to an uninterrupted run.
    A run that already finished is not trained again: its result is read back.

    Raises:
        ConfigError: not a run directory, damaged or foreign run files, no checkpoint yet,
            an asyncio-clock run (``docs/runs.md``).
    """
    run_dir = Path(run_dir)
    cfg = runner.load_run_config(run_dir)
    if cfg.logging.progress == "auto":  # in memory only: config.yaml is not touched
        cfg.logging.progress = "none"
    if is_complete(run_dir):
        prep = runner.prepare(cfg)
        prep.executor.close()
        return load_result(prep, run_dir)
    return finish(prepare_resume(cfg, run_dir), run_dir, resume=True)
