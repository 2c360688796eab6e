"""What crosses the wire, from the config: the uplink compression, the simulated attack, the
server's robust rule and DP-FedAvg of a synchronous run (issue 16), checked together against
the algorithm and built into the :class:`~fedtorch.federation.SyncSettings` fields."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from fedtorch.experiment.compression_config import build_compressor
from fedtorch.experiment.errors import ConfigError
from fedtorch.experiment.privacy_config import build_local_dpsgd, build_privacy
from fedtorch.experiment.robust_config import build_aggregator, build_attack
from fedtorch.federation.local_privacy import LocalPrivacy
from fedtorch.federation.byzantine import Attack, RobustAggregation, check_robust
from fedtorch.federation.server_rules import check_server_rule
from fedtorch.federation.private_aggregation import PoissonSampling, PrivateAggregation
from fedtorch.federation.secure_sum import SecureSum
from fedtorch.federation.uplink import Uplink


@dataclass(frozen=True)
class Wire:
    """The run's message transforms and the training labels the executors get.

    Attributes:
        uplink, attack, robust, privacy, secure: the :class:`~fedtorch.federation.SyncSettings` fields.
        train_y: ``(N,)`` training labels, the malicious clients' flipped under the
            label-flip attack (a new tensor then; the dataset's own otherwise).
        gradients: the executors' gradient source (local DP-SGD's, or the default).
        local_privacy: local DP-SGD's accounting (:class:`~fedtorch.federation.local_privacy.LocalPrivacy`).
    """

    uplink: Uplink
    attack: Attack
    robust: RobustAggregation
    privacy: PrivateAggregation
    secure: SecureSum
    train_y: torch.Tensor
    gradients: object
    local_privacy: LocalPrivacy

    def settings(self) -> dict:
        """The keyword arguments of ``SyncSettings`` (Poisson sampling's sampler included)."""
        out = {"uplink": self.uplink, "attack": self.attack, "robust": self.robust, "privacy": self.privacy,
               "secure": self.secure, "local_privacy": self.local_privacy}
        mechanism = self.privacy.mechanism
        if mechanism is not None and mechanism.sampling == "poisson":
            out["sampler"] = PoissonSampling(mechanism.sampling_rate)
        return out


def build_wire(cfg: DictConfig, data, algorithm, clients_per_round: int, probe=None) -> Wire:
    """The transforms of ``compression.*``, ``attack.*``, ``robust.*``, ``privacy.*`` and ``secagg.*``.

    Args:
        cfg: the validated config.
        data: the :class:`~fedtorch.data.FederatedData` (N clients, their indices, labels).
        algorithm: the run's algorithm (robust aggregation and DP need its server step to be
            a server optimiser on the weighted mean of the deltas).
        clients_per_round: M.
        probe: ``(LocalDPSGD) -> gradients per local step`` of the algorithm (local DP-SGD
            only; :func:`~fedtorch.experiment.privacy_config.queries_per_step`).

    Raises:
        ConfigError: a bad value, a cohort too small for the robust rule, or an algorithm
            with its own server rule under robust aggregation or DP.
    """
    ds = data.data
    attack = Attack.build(build_attack(cfg, ds.num_classes), data.num_clients, cfg.attack.fraction, cfg.seed)
    robust = build_aggregator(cfg)
    mechanism, accountant = build_privacy(cfg, data.num_clients, clients_per_round)
    try:
        check_robust(robust, algorithm, clients_per_round)
    except ValueError as err:
        raise ConfigError(f"robust.aggregator={cfg.robust.aggregator!r}: {err}") from None
    try:
        if mechanism is not None:
            check_server_rule(algorithm)
    except ValueError as err:
        raise ConfigError(f"privacy.mechanism={cfg.privacy.mechanism!r}: {err}") from None
    secure = build_secure_sum(cfg)
    if secure.enabled:
        try:
            check_server_rule(algorithm)
            secure.protocol(clients_per_round)
        except ValueError as err:
            raise ConfigError(f"secagg.enabled=true: {err}") from None
    gradients, local_privacy = build_local_dpsgd(cfg, data, probe)
    return Wire(Uplink(build_compressor(cfg), cfg.seed), attack, RobustAggregation(robust),
                PrivateAggregation(mechanism, accountant, cfg.seed), secure,
                attack.poison_labels(ds.train_y, data.client_indices), gradients, local_privacy)


def build_secure_sum(cfg: DictConfig) -> SecureSum:
    """The :class:`SecureSum` of ``secagg.*``.

    Raises:
        ConfigError: ``secagg.dropout`` or ``secagg.threshold`` outside [0, 1) / (0, 1], or
            secure aggregation combined with what it cannot serve: robust aggregation (the
            server never sees individual updates), DP-FedAvg (its noise is added by the
            server to the clipped plain sum), compression (the clients' sparse supports
            differ) and asynchronous runs.
    """
    a = cfg.secagg
    if not a.enabled:
        return SecureSum()
    dp_fedavg = cfg.privacy.mechanism if cfg.privacy.mechanism == "dp_fedavg" else None  # local DP-SGD composes
    for key, other in (("robust.aggregator", cfg.robust.aggregator), ("privacy.mechanism", dp_fedavg),
                       ("compression.method", cfg.compression.method),
                       ("federation.mode", "async" if cfg.federation.mode == "async" else None)):
        if other is not None:
            raise ConfigError(f"secagg.enabled=true cannot be combined with {key}={other!r}: secure aggregation hides "
                              "the individual updates these need (docs/secure_aggregation.md)")
    if not 0 <= a.dropout < 1:
        raise ConfigError(f"secagg.dropout={a.dropout!r} is not allowed: a fraction in [0, 1)")
    if not 0 < a.threshold <= 1:
        raise ConfigError(f"secagg.threshold={a.threshold!r} is not allowed: a fraction in (0, 1]")
    return SecureSum(True, a.masked, a.bits, a.quant_bits, a.clip_range, a.neighbours, a.stochastic, a.threshold,
                     a.dropout, cfg.federation.weighting == "samples", cfg.seed)
