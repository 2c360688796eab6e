"""What a validated config means to the loops: the server optimiser and its
hyper-parameters, each client's local work, the cohort size M and the delay model.

:func:`~fedtorch.experiment.config.validate` calls :func:`resolve_server` and
:func:`delay_model` to check these sections; the runners call every function here on a
config that passed it.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from fedtorch.algorithms.server_optimizers import SERVER_OPTIMIZERS, make_server_optimizer, server_optimizer_keys
from fedtorch.experiment.errors import ConfigError, check_choice
from fedtorch.federation.delays import DelayError, DelayModel, read_trace


def resolve_server(server: DictConfig, cls) -> dict[str, Any]:
    """The server optimiser's name and every hyper-parameter it takes.

    Precedence: keys set in ``server.*`` > the algorithm's ``server_defaults`` (only
    when its optimiser is the one in use) > the optimiser's own defaults.

    Raises:
        ConfigError: unknown optimiser, a key the optimiser does not use, or a value
            out of range.
    """
    algo = dict(cls.server_defaults)
    name = server.optimizer or algo.get("optimizer", "sgd")
    check_choice("server.optimizer", name, SERVER_OPTIMIZERS)
    if name != algo.pop("optimizer", "sgd"):
        algo = {}
    allowed = server_optimizer_keys(name)
    user = {k: v for k, v in server.items() if k != "optimizer" and v is not None}
    for key, value in user.items():
        if key not in allowed:
            raise ConfigError(f"server.{key}={value!r} is not used by server.optimizer={name!r}; it takes {', '.join('server.' + k for k in allowed)}")
    try:
        opt = make_server_optimizer(name, **{**algo, **user})
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return {"optimizer": name, **{k: getattr(opt, k) for k in allowed}}


def server_hparams(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """``(optimizer name, hyper-parameters)`` of a validated config's server section."""
    section = {k: v for k, v in cfg.server.items() if v is not None}
    return section.pop("optimizer"), section


def local_work(cfg: DictConfig) -> dict[str, Any]:
    """The :class:`~fedtorch.federation.planning.LocalWork` keyword arguments of a validated
    config, shared by ``SyncSettings`` and ``AsyncSettings`` (``client.*``, ``seed``,
    ``federation.weighting``, ``stragglers.*``)."""
    c = cfg.client
    return dict(
        batch_size=c.batch_size, local_epochs=c.local_epochs, local_steps=c.local_steps, lr=c.lr, seed=cfg.seed,
        weighting=cfg.federation.weighting, straggler_fraction=cfg.stragglers.fraction,
        straggler_policy=cfg.stragglers.policy, early_stopping=c.early_stopping,
    )


def clients_per_round(cfg: DictConfig) -> int:
    """M: ``federation.participation * N`` (rounded, at least 1) if set, else ``clients_per_round``."""
    f = cfg.federation
    if f.participation is not None:
        return max(1, round(f.participation * cfg.data.num_clients))
    return f.clients_per_round


def delay_model(cfg: DictConfig) -> DelayModel:
    """The :class:`~fedtorch.federation.delays.DelayModel` of ``delays.*`` (reads the trace file).

    Raises:
        ConfigError: unknown model, a negative delay, or a missing or malformed trace.
    """
    d = cfg.delays
    try:
        trace = read_trace(d.trace, cfg.data.num_clients) if d.model == "trace" and d.trace else ()
        return DelayModel(model=d.model, mean=d.mean, max=d.max, sigma=d.sigma, step_seconds=d.step_seconds, trace=trace)
    except DelayError as e:
        raise ConfigError(str(e)) from None
