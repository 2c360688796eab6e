"""What crosses the wire, from the config: the uplink compression, the simulated attack, the
server's robust rule and DP-FedAvg of a synchronous run (issue 16), checked together against
the algorithm and built into the :class:`~fedtorch.federation.SyncSettings` fields."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from fedtorch.experiment.compression_config import build_compressor
from fedtorch.experiment.errors import ConfigError
from fedtorch.experiment.privacy_config import build_privacy
from fedtorch.experiment.robust_config import build_aggregator, build_attack
from fedtorch.federation.byzantine import Attack, RobustAggregation, check_robust, check_server_rule
from fedtorch.federation.private_aggregation import PrivateAggregation
from fedtorch.federation.uplink import Uplink


@dataclass(frozen=True)
class Wire:
    """The run's message transforms and the training labels the executors get.

    Attributes:
        uplink, attack, robust, privacy: the :class:`~fedtorch.federation.SyncSettings` fields.
        train_y: ``(N,)`` training labels, the malicious clients' flipped under the
            label-flip attack (a new tensor then; the dataset's own otherwise).
    """

    uplink: Uplink
    attack: Attack
    robust: RobustAggregation
    privacy: PrivateAggregation
    train_y: torch.Tensor

    def settings(self) -> dict:
        """The keyword arguments of ``SyncSettings``."""
        return {"uplink": self.uplink, "attack": self.attack, "robust": self.robust, "privacy": self.privacy}


def build_wire(cfg: DictConfig, data, algorithm, clients_per_round: int) -> Wire:
    """The transforms of ``compression.*``, ``attack.*``, ``robust.*`` and ``privacy.*``.

    Args:
        cfg: the validated config.
        data: the :class:`~fedtorch.data.FederatedData` (N clients, their indices, labels).
        algorithm: the run's algorithm (robust aggregation and DP need its server step to be
            a server optimiser on the weighted mean of the deltas).
        clients_per_round: M.

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
    return Wire(Uplink(build_compressor(cfg), cfg.seed), attack, RobustAggregation(robust),
                PrivateAggregation(mechanism, accountant, cfg.seed), attack.poison_labels(ds.train_y, data.client_indices))
