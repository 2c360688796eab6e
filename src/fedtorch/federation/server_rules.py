"""What robust aggregation, DP-FedAvg and secure aggregation share: they replace the weighted
mean of the round's updates by one aggregate of their own, which the algorithm's server
optimiser then steps on. That needs an algorithm whose server step *is* a server optimiser on
the weighted mean of the deltas (:func:`check_server_rule`); the aggregate reaches it as a
one-row message of weight 1 (:func:`one_row`)."""

from __future__ import annotations

import torch

from fedtorch.protocol import ClientMessage


def check_server_rule(algorithm) -> None:
    """That ``algorithm``'s server step is a server optimiser on the weighted mean of the
    deltas (the base ``aggregate`` and ``server_delta`` of ``FedAlgorithm``).

    Raises:
        ValueError: the algorithm has its own server rule.
    """
    from fedtorch.algorithms.base import FedAlgorithm

    cls = type(algorithm)
    if not (isinstance(algorithm, FedAlgorithm) and cls.aggregate is FedAlgorithm.aggregate
            and cls.server_delta is FedAlgorithm.server_delta):
        raise ValueError(f"algorithm {getattr(algorithm, 'name', cls.__name__)!r} has its own server rule; this "
                         "replaces the weighted mean of the updates and needs an algorithm whose server step is a "
                         "server optimiser on that mean (fedavg, fedavgm, fedadam, fedyogi, fedadagrad, fedprox, "
                         "fedsam, ...)")


def one_row(messages: ClientMessage, weights: torch.Tensor, delta: torch.Tensor) -> tuple[ClientMessage, torch.Tensor]:
    """The message the algorithm aggregates in place of the round's M: ``delta`` (``(P,)``),
    the cohort's total samples, its largest K_i and its weighted mean loss, with weight 1.

    Raises:
        ValueError: ``messages`` is a subclass carrying fields beyond ``delta``.
    """
    if type(messages) is not ClientMessage:
        raise ValueError(f"this server rule needs plain ClientMessage updates, got {type(messages).__name__}")
    w = weights.to(torch.float64)
    one = ClientMessage(
        delta=delta.to(messages.delta.dtype).to(messages.delta.device).unsqueeze(0),
        num_samples=messages.num_samples.sum().reshape(1),
        num_steps=(messages.num_steps.max() if messages.num_steps.numel() else messages.num_steps.new_zeros(())).reshape(1),
        loss=(w * messages.loss.to(w.device, torch.float64)).sum().reshape(1),
    )
    return one, torch.ones(1, dtype=weights.dtype, device=weights.device)
