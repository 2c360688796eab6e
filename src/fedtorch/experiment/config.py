"""Loading, overriding and validating configurations.

``load_experiment(folder)`` reads ``folder/config.py`` (a plain ``CONFIG`` dict, loaded
with importlib: no ``exec`` into our globals), checks the folder name against it
(``A0d5C100`` = Dirichlet alpha 0.5, 100 clients; ``d`` is the decimal point), and merges
it onto :class:`~fedtorch.experiment.schema.Config`. ``apply_overrides`` applies
``key.sub=value`` strings, and ``validate`` checks every value before anything runs.
Every failure is a :class:`ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedtorch.data import DATASETS, PARTITIONERS
from fedtorch.data.local_split import check_holdout
from fedtorch.data.partition.common import check_at_least, check_dirichlet
from fedtorch.execution import MODES, SlotError, parse_slots
from fedtorch.execution.base import check_count
from fedtorch.experiment import plugins
from fedtorch.experiment.algorithm_config import algorithm_entry, algorithm_hparams
from fedtorch.experiment.compression_config import build_compressor
from fedtorch.experiment.privacy_config import check_privacy
from fedtorch.experiment.robust_config import build_aggregator, build_attack
from fedtorch.experiment.errors import ConfigError, check_choice, check_rule
from fedtorch.experiment.run_settings import delay_model, resolve_server
from fedtorch.experiment.schema import Config
from fedtorch.federation.async_settings import check_async_times, check_clock, check_concurrency
from fedtorch.federation.planning import HookError, Hooks, check_weighting
from fedtorch.federation.sampling import check_clients_per_round
from fedtorch.federation.server_steps import check_buffer_size
from fedtorch.federation.stragglers import check_stragglers
from fedtorch.models import MODELS

_FOLDER_RE = re.compile(r"(?:^|_)A(\d+(?:d\d+)?)C(\d+)$")


def parse_folder_name(name: str) -> tuple[float, int] | None:
    """``"A0d5C100" -> (0.5, 100)``; None if the name has no ``A<alpha>C<clients>`` suffix."""
    m = _FOLDER_RE.search(name)
    if not m:
        return None
    return float(m.group(1).replace("d", ".")), int(m.group(2))


def _omegaconf_error(e: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(e, "full_key", None) or "?"
    msg = str(getattr(e, "msg", e)).splitlines()[0]
    if "not in" in msg and "Key" in msg:
        section = key.rsplit(".", 1)[0] if "." in key else ""
        allowed = ", ".join(_section_keys(section))
        return ConfigError(f"unknown key {key!r} in {where}; allowed keys here: {allowed}")
    return ConfigError(f"{key}: {msg} ({where})")


def _section_keys(section: str) -> list[str]:
    node = OmegaConf.structured(Config)
    for part in filter(None, section.split(".")):
        node = node[part]
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def defaults() -> DictConfig:
    """The schema's defaults as a struct-mode OmegaConf config."""
    return OmegaConf.structured(Config)


def from_dict(raw: dict[str, Any], where: str = "config") -> DictConfig:
    """Merge a plain dict onto the schema (unknown keys and wrong types raise ConfigError)."""
    try:
        return OmegaConf.merge(defaults(), raw)
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e, where) from None


def load_experiment(folder: str | Path) -> tuple[DictConfig, Path]:
    """Read ``folder/config.py`` and return (config merged onto defaults, folder path).

    Raises:
        ConfigError: no such folder or ``config.py``, no ``CONFIG`` dict, bad keys or
            types, or a folder name that disagrees with CONFIG.
    """
    folder = Path(folder)
    path = folder / "config.py"
    if not path.is_file():
        raise ConfigError(f"experiment folder {str(folder)!r} has no config.py (expected experiments/<DATASET>/<folder>/config.py)")
    raw, refs = plugins.experiment_plugins(path)  # CONFIG; MODEL, DATASET, ... ; algorithm classes registered
    raw = _with_plugins(raw, refs, folder.resolve(), path)
    cfg = from_dict(raw, where=str(path))
    parsed = parse_folder_name(folder.resolve().name)
    if parsed is not None:
        alpha, clients = parsed
        if not math.isclose(cfg.data.alpha, alpha, rel_tol=1e-9):
            raise ConfigError(f"folder name {folder.name!r} says alpha {alpha} but CONFIG has data.alpha={cfg.data.alpha}")
        if cfg.data.num_clients != clients:
            raise ConfigError(
                f"folder name {folder.name!r} says {clients} clients but CONFIG has data.num_clients={cfg.data.num_clients}"
            )
    return cfg, folder


def _with_plugins(raw: dict, refs: dict[str, str], folder: Path, path: Path) -> dict:
    """CONFIG with each plug-in ``config.py`` defines set as the reference of its key (where
    CONFIG does not set that key itself), and relative ``file.py:Name`` references made
    absolute (relative to the experiment folder)."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for key in (*PLUGIN_KEYS, *refs):
        section, sub = key.split(".")
        value = raw.get(section, {}).get(sub) if isinstance(raw.get(section), dict) else None
        if value is None and key in refs:
            raw.setdefault(section, {})[sub] = refs[key]
        elif plugins.is_reference(value):
            target, _, attr = value.rpartition(":")
            if target.endswith(".py") and not Path(target).is_absolute():
                raw[section][sub] = f"{(folder / target).resolve()}:{attr}"
    return raw


PLUGIN_KEYS = ("model.name", "data.dataset", "data.partition", "model.loss", "algorithm.name")


def parse_override(text: str) -> tuple[str, Any]:
    """``"algorithm.mu=0.01" -> ("algorithm.mu", 0.01)`` (value parsed as YAML).

    Raises:
        ConfigError: no ``=``, or an empty key.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key.sub=value (see `fedtorch run --help`)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Apply ``key.sub=value`` overrides to a copy of ``cfg``.

    Raises:
        ConfigError: unknown key, wrong type, or a comma list without ``--multirun``.
    """
    cfg = cfg.copy()
    for text in overrides:
        key, value = parse_override(text)
        if isinstance(value, str) and "," in value and not value.startswith("["):
            raise ConfigError(f"{key}: {value!r} is a list of values; add --multirun to sweep over them")
        if key == "algorithm":
            raise ConfigError("algorithm: set its fields, e.g. algorithm.name=fedprox algorithm.mu=0.01")
        if key.startswith("algorithm."):
            cfg.algorithm[key.split(".", 1)[1]] = value
            continue
        try:
            if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
                section = key.rsplit(".", 1)[0] if "." in key else ""
                allowed = ", ".join(_section_keys(section)) if _is_section(section) else "see `fedtorch run --help`"
                raise ConfigError(f"unknown key {key!r} in overrides; allowed keys here: {allowed}")
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as e:
            raise _omegaconf_error(e, "overrides") from None
    return cfg


def _is_section(section: str) -> bool:
    try:
        _section_keys(section)
        return True
    except Exception:
        return False


def _choice_or_plugin(key: str, value: Any, allowed, nargs: int, rule: str) -> None:
    """A built-in name, or a plug-in reference to a callable taking ``nargs`` arguments."""
    if plugins.is_reference(value):
        plugins.callable_plugin(key, value, nargs, rule)
    else:
        check_choice(key, value, allowed)


def _rule(check, *args) -> None:
    """Apply a rule owned by a lower layer (its message names the key); ConfigError on failure.

    The loops' own settings call the same functions, so each rule and its message exist once.
    """
    try:
        check(*args)
    except (ValueError, HookError) as e:
        raise ConfigError(str(e)) from None


def _validate_tracking(log) -> None:
    """``logging.mlflow*`` and ``logging.wandb*``; a tracker turned on must be installed
    (:func:`~fedtorch.experiment.tracking.check_available`: the message names the pip command)."""
    from fedtorch.experiment.tracking import check_available

    check_choice("logging.wandb_mode", log.wandb_mode, {"offline", "online"})
    for key in ("mlflow_uri", "mlflow_experiment", "wandb_project"):
        check_rule(log[key] is None or log[key].strip() != "", f"logging.{key}", log[key], "must be null or a non-empty text")
    p = log.wandb_project
    check_rule(p is None or not set(p) & set("/\\#?%:"), "logging.wandb_project", p,
               "W&B project names cannot hold any of / \\ # ? % :")
    check_available(log)


def validate(cfg: DictConfig) -> DictConfig:
    """Check every value; return the config with the algorithm's defaults filled in.

    Checks that need the data (more clients than samples) happen when it is loaded.

    Raises:
        ConfigError: the first bad value found.
    """
    d, c, f = cfg.data, cfg.client, cfg.federation
    _choice_or_plugin("data.dataset", d.dataset, DATASETS, 0, plugins.DATASET_RULE)
    _choice_or_plugin("data.partition", d.partition, PARTITIONERS, 3, plugins.PARTITION_RULE)
    _choice_or_plugin("model.name", cfg.model.name, MODELS, 2, plugins.MODEL_RULE)
    plugins.loss_function(cfg.model.loss)
    check_choice("execution.mode", cfg.execution.mode, MODES)
    _validate_federation(cfg)  # mode, async clock and delays, stragglers, early stopping
    _rule(check_weighting, f.weighting)
    check_choice("logging.progress", cfg.logging.progress, {"auto", "rich", "plain", "none"})
    _validate_tracking(cfg.logging)
    build_compressor(cfg)  # compression.*
    build_aggregator(cfg)  # robust.*
    build_attack(cfg)  # attack.*
    check_privacy(cfg)  # privacy.*
    _rule(check_dirichlet, "alpha", d.alpha)
    _rule(check_at_least, "num_clients", d.num_clients, 1)
    check_rule(d.min_samples >= 0, "data.min_samples", d.min_samples, "must be >= 0")
    _rule(check_at_least, "shards_per_client", d.shards_per_client, 1)
    _rule(check_dirichlet, "beta", d.beta)
    check_rule(d.classes_per_client >= 1, "data.classes_per_client", d.classes_per_client, "must be >= 1")
    for key in ("size_sigma", "noise_sigma", "synthetic_alpha", "synthetic_beta"):
        _rule(check_at_least, key, d[key], 0, True)
    if d.partition == "natural":
        check_rule(not plugins.is_reference(d.dataset), "data.partition", d.partition,
                   "a plug-in dataset has no users of its own; use a partitioner (or a plug-in one)")
        with_users = sorted(name for name, spec in DATASETS.items() if spec.users)
        check_rule(DATASETS[d.dataset].users, "data.partition", d.partition,
                   f"dataset {d.dataset!r} has no users of its own; natural needs one of {', '.join(with_users)}")
    for key in ("max_train_samples", "max_test_samples"):
        v = d[key]
        check_rule(v is None or v >= 1, f"data.{key}", v, "must be null or >= 1")
    for key in ("image_key", "label_key", "test_split"):  # dataset=huggingface's column and split names
        v = d[key]
        check_rule((v is None and key == "test_split") or (isinstance(v, str) and v.strip() != ""), f"data.{key}", v,
                   "must be a non-empty column or split name" + (" (or null: 'test')" if key == "test_split" else ""))
    check_rule(d.image_key != d.label_key, "data.label_key", d.label_key, "must name another column than data.image_key")
    check_rule(cfg.rounds >= 1, "rounds", cfg.rounds, "must be >= 1")
    check_rule(c.lr > 0, "client.lr", c.lr, "must be > 0")
    check_rule(c.batch_size >= 1, "client.batch_size", c.batch_size, "must be >= 1")
    check_rule(c.local_epochs >= 1, "client.local_epochs", c.local_epochs, "must be >= 1")
    check_rule(c.local_steps is None or c.local_steps >= 1, "client.local_steps", c.local_steps, "must be null or >= 1")
    check_rule(0 <= c.momentum < 1, "client.momentum", c.momentum, "must be in [0, 1)")
    check_rule(c.weight_decay >= 0, "client.weight_decay", c.weight_decay, "must be >= 0")
    if f.participation is not None:
        check_rule(0 < f.participation <= 1, "federation.participation", f.participation, "must be in (0, 1]")
    else:
        _rule(check_clients_per_round, f.clients_per_round, d.num_clients)
    check_rule(cfg.eval.every >= 1, "eval.every", cfg.eval.every, "must be >= 1")
    check_rule(cfg.eval.clients_every >= 0, "eval.clients_every", cfg.eval.clients_every, "must be >= 0 (0: off)")
    _rule(check_holdout, cfg.eval.holdout)
    check_rule(cfg.eval.diverge_loss is None or cfg.eval.diverge_loss > 0, "eval.diverge_loss", cfg.eval.diverge_loss,
               "must be null (off) or > 0")
    check_rule(0 < cfg.eval.diverge_nonfinite <= 1, "eval.diverge_nonfinite", cfg.eval.diverge_nonfinite, "must be in (0, 1]")
    check_rule(cfg.checkpoint.every >= 1, "checkpoint.every", cfg.checkpoint.every, "must be >= 1")
    m = f.state_memory_mb
    check_rule(m is None or (math.isfinite(m) and m >= 0), "federation.state_memory_mb", m,
               "must be null (no limit: every client state in RAM) or a number of MiB >= 0 "
               "(states beyond it spill to <run_dir>/client_states; 0: all on disk)")
    dev = cfg.execution.device
    check_rule(dev == "cpu" or re.fullmatch(r"cuda(:\d+)?", dev) is not None, "execution.device", dev, "use cpu, cuda or cuda:<index>")
    _validate_execution(cfg.execution)
    cls, hp = algorithm_hparams(cfg)
    server = resolve_server(cfg.server, cls)
    cfg = cfg.copy()
    cfg.algorithm = {**algorithm_entry(cls), **dataclasses.asdict(hp)}
    for key in cfg.server:
        cfg.server[key] = server.get(key)
    return cfg


def _validate_execution(e: DictConfig) -> None:
    for key in ("threads", "max_clients_per_step"):
        _rule(check_count, key, e[key])
    check_rule(e.edges == 0 or (e.mode == "distributed" and e.edges > 0), "execution.edges", e.edges,
               "edges group worker processes: a count >= 1 with execution.mode=distributed, else 0")
    if e.devices is not None:
        try:
            parse_slots(list(e.devices))
        except SlotError as err:
            raise ConfigError(str(err)) from None


def _validate_federation(cfg: DictConfig) -> None:
    """``federation.*`` (sync or async), ``delays.*``, ``stragglers.*`` and the client options
    that depend on the mode (``client.early_stopping``, ``client.lr_delay_alpha``). The
    range rules live with the loops that use them (``fedtorch.federation``); the rules here
    are about which options a mode honours."""
    f, c, st = cfg.federation, cfg.client, cfg.stragglers
    check_choice("federation.mode", f.mode, {"sync", "async"})
    check_rule(c.early_stopping >= 0, "client.early_stopping", c.early_stopping, "must be >= 0 epochs (0: off)")
    _rule(check_async_times, c.lr_delay_alpha, f.max_seconds)
    _rule(check_stragglers, st.fraction, st.policy)
    if f.mode == "sync":
        check_rule(c.lr_delay_alpha == 0, "client.lr_delay_alpha", c.lr_delay_alpha,
                   "needs federation.mode=async (synchronous rounds have no delays)")
        check_rule(f.buffer_size is None, "federation.buffer_size", f.buffer_size,
                   "needs federation.mode=async (a synchronous round aggregates its whole cohort)")
        return
    cls, _ = algorithm_hparams(cfg)
    _rule(check_buffer_size, f.buffer_size, Hooks(cls, "async"))
    check_rule(st.fraction == 0, "stragglers.fraction", st.fraction,
               "stragglers are for federation.mode=sync; in async mode slow clients come from delays.*")
    check_rule(cfg.eval.clients_every == 0, "eval.clients_every", cfg.eval.clients_every,
               "per-client evaluation needs federation.mode=sync (asynchronous runs have no rounds to evaluate after)")
    _rule(check_clock, f.clock, f.sleep_scale)
    if f.concurrency is not None:
        _rule(check_concurrency, f.concurrency, cfg.data.num_clients)
    delay_model(cfg)
