"""The ``privacy`` section: DP-FedAvg's mechanism and accountant (:mod:`fedtorch.privacy`,
wired by :mod:`fedtorch.federation.private_aggregation`), or local DP-SGD's gradient source
and its accounting (:class:`fedtorch.privacy.LocalDPSGD`, :mod:`fedtorch.federation.local_privacy`)."""

from __future__ import annotations

import dataclasses

import torch
from omegaconf import DictConfig, OmegaConf

from fedtorch.experiment.errors import ConfigError

MECHANISMS = ("dp_fedavg", "dp_sgd")
UNLIMITED = 10 ** 6  # the probe's query limit: it counts, it does not stop


def check_privacy(cfg: DictConfig) -> None:
    """The start-up checks that need no data.

    Raises:
        ConfigError: an unknown mechanism, neither or both of ``privacy.noise_multiplier`` and
            ``privacy.target_epsilon``, or a combination without meaning: asynchronous
            runs, robust aggregation (its rules change the clipped sum the accountant
            covers), compression (error feedback carries unclipped residuals past C).
    """
    p = cfg.privacy
    if p.mechanism is None:
        return
    if p.mechanism not in MECHANISMS:
        raise ConfigError(f"privacy.mechanism={p.mechanism!r} is not allowed: null or one of {', '.join(MECHANISMS)}")
    if p.mechanism == "dp_sgd":
        _check_dp_sgd(cfg)
        return
    if (p.noise_multiplier is None) == (p.target_epsilon is None):
        raise ConfigError("privacy.mechanism=dp_fedavg needs exactly one of privacy.noise_multiplier and "
                          f"privacy.target_epsilon (got {p.noise_multiplier!r} and {p.target_epsilon!r})")
    for key, other in (("federation.mode", cfg.federation.mode == "async"), ("robust.aggregator", cfg.robust.aggregator),
                       ("compression.method", cfg.compression.method)):
        if other:
            raise ConfigError(f"privacy.mechanism={p.mechanism!r} cannot be combined with {key}="
                              f"{'async' if key == 'federation.mode' else other!r}: not supported (docs/privacy.md)")


def build_privacy(cfg: DictConfig, num_clients: int, clients_per_round: int):
    """``(DPFedAvg, Accountant)`` of ``privacy.*`` for N clients and M per round, or
    ``(None, None)``. With ``privacy.target_epsilon`` the noise multiplier is calibrated by
    dp-accounting for ``rounds`` rounds at q = M / N (``privacy.sampling``: without
    replacement, or Poisson).

    Raises:
        ConfigError: as :func:`check_privacy`, or a parameter the library rejects.
    """
    check_privacy(cfg)
    p = cfg.privacy
    if p.mechanism != "dp_fedavg":
        return None, None
    from fedtorch.privacy import AdaptiveClip, DPFedAvg, noise_multiplier_for

    q = clients_per_round / num_clients
    if p.sampling not in ("fixed", "poisson"):
        raise ConfigError(f"privacy.sampling={p.sampling!r} is not allowed: fixed or poisson")
    try:
        z = p.noise_multiplier
        if z is None:
            z = noise_multiplier_for(p.target_epsilon, q, cfg.rounds, p.delta, p.sampling, p.accountant, num_clients)
        adaptive = None
        if p.adaptive_clipping:
            stddev = p.clipped_count_stddev if p.clipped_count_stddev is not None else clients_per_round / 20
            adaptive = AdaptiveClip(p.target_quantile, p.clip_learning_rate, stddev)
        mechanism = DPFedAvg(float(z), p.clip, num_clients, q, p.sampling, adaptive)
        return mechanism, mechanism.accountant(p.delta, p.accountant)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    except ImportError:
        raise ConfigError("privacy.mechanism=dp_fedavg needs dp-accounting: pip install 'fedtorch[privacy]'") from None


def _check_dp_sgd(cfg: DictConfig) -> None:
    p = cfg.privacy
    if p.noise_multiplier is None or p.target_epsilon is not None:
        raise ConfigError("privacy.mechanism=dp_sgd needs privacy.noise_multiplier (privacy.target_epsilon is not "
                          f"supported for local DP-SGD; got {p.noise_multiplier!r} and {p.target_epsilon!r})")
    for key, bad, allowed in (("privacy.sampling", p.sampling != "fixed", "fixed (client sampling is not credited)"),
                              ("privacy.adaptive_clipping", p.adaptive_clipping, "false"),
                              ("federation.mode", cfg.federation.mode == "async", "sync")):
        if bad:
            raise ConfigError(f"privacy.mechanism=dp_sgd cannot be combined with {key}="
                              f"{OmegaConf.select(cfg, key)!r}: allowed {allowed} (docs/privacy.md)")
    if p.accountant not in ("rdp", "pld"):
        raise ConfigError(f"privacy.accountant={p.accountant!r} is not allowed: rdp or pld")


def build_local_dpsgd(cfg: DictConfig, data, probe) -> tuple[object, object]:
    """``(LocalDPSGD gradient source, LocalPrivacy accounting)`` of ``privacy.mechanism=dp_sgd``,
    or the default source and no accounting. ``probe(source) -> m`` measures the most gradients
    the algorithm takes in one local step (:func:`queries_per_step`), which the accountant charges.

    Raises:
        ConfigError: as :func:`check_privacy`, or a parameter the library rejects.
    """
    from fedtorch.execution.local_training import MINIBATCH
    from fedtorch.federation.local_privacy import LocalPrivacy

    check_privacy(cfg)
    p = cfg.privacy
    if p.mechanism != "dp_sgd":
        return MINIBATCH, LocalPrivacy()
    from fedtorch.privacy import LocalDPSGD, epsilon
    from fedtorch.privacy.local_dpsgd import lot_rate

    try:
        source = LocalDPSGD(float(p.clip), float(p.noise_multiplier))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        source = dataclasses.replace(source, queries_per_step=probe(source))
    except ValueError as e:
        raise ConfigError(f"privacy.mechanism='dp_sgd': {e}") from None
    try:
        rates = torch.tensor([lot_rate(int(n), cfg.client.batch_size) for n in data.sizes()], dtype=torch.float64)
        epsilon(source.noise_multiplier, float(rates.max()), 0, p.delta, "poisson", p.accountant)  # checks delta, accountant
    except ValueError as e:
        raise ConfigError(str(e)) from None
    except ImportError:
        raise ConfigError("privacy.mechanism=dp_sgd needs dp-accounting: pip install 'fedtorch[privacy]'") from None
    return source, LocalPrivacy(source, rates, float(p.delta), p.accountant)


def queries_per_step(algorithm, model_factory, train_x, train_y, indices, batch_size: int, loss_fn, x0, seed: int,
                     lr: float, source, steps: int = 3) -> int:
    """The most gradients ``algorithm`` takes in one of ``steps`` local steps of a client
    with ``indices``, run on a fresh replica from ``x0`` with ``source``'s lots (counted,
    not limited). Algorithms whose count depends on the step (Delta-SGD: 1 at the first,
    2 after) show their largest within 3 steps; the source raises later if a step takes more.

    Raises:
        ValueError: the model cannot give per-sample gradients (BatchNorm).
    """
    from fedtorch.execution.local_training import train_task
    from fedtorch.flat import FlatModule
    from fedtorch.protocol import ClientTask, RoundContext

    counting = _Counting(dataclasses.replace(source, queries_per_step=UNLIMITED))
    replica = FlatModule(model_factory())
    ctx = RoundContext(round=0, client_id=0, seed=seed, num_samples=int(indices.numel()), num_steps=steps, lr=lr)
    server = algorithm.init_server(x0.cpu())
    train_task(algorithm, replica, train_x, train_y, ClientTask(ctx, indices.cpu()), batch_size,
               algorithm.broadcast(server), algorithm.init_client(x0.cpu()), loss_fn, counting)
    return max(counting.most, 1)


class _Counting:
    """A gradient source handing out ``source``'s client lots, kept to read their query counts."""

    serial_only = None

    def __init__(self, source):
        self.source, self.clients = source, []

    def for_client(self, ctx, device):
        self.clients.append(self.source.for_client(ctx, device))
        return self.clients[-1]

    @property
    def most(self) -> int:
        return max((c.most_queries for c in self.clients), default=0)


def privacy_results(settings, delta: float, last_row: dict) -> dict:
    """The ``result.json`` keys of a DP run from its last metrics row: DP-FedAvg's
    ``epsilon`` or local DP-SGD's ``local_epsilon``, with ``privacy_delta``,
    ``noise_multiplier`` (and ``queries_per_step``); ``{}`` without DP."""
    mechanism = settings.privacy.mechanism
    if mechanism is not None and last_row.get("epsilon") is not None:
        return {"epsilon": last_row["epsilon"], "privacy_delta": delta, "noise_multiplier": mechanism.noise_multiplier}
    source = settings.local_privacy.source
    if source is not None and last_row.get("local_epsilon") is not None:
        return {"local_epsilon": last_row["local_epsilon"], "privacy_delta": delta,
                "noise_multiplier": source.noise_multiplier, "queries_per_step": source.queries_per_step}
    return {}
