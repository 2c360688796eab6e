"""The ``privacy`` section: DP-FedAvg's mechanism and accountant (:mod:`fedtorch.privacy`,
wired by :mod:`fedtorch.federation.private_aggregation`)."""

from __future__ import annotations

from omegaconf import DictConfig

from fedtorch.experiment.errors import ConfigError

MECHANISMS = ("dp_fedavg",)


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
    if p.mechanism is None:
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
