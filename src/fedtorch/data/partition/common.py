"""What every partitioner shares: its error, argument checks and client-size draws."""

from __future__ import annotations

import numpy as np


class PartitionError(ValueError):
    """The requested split is impossible (the message says which setting to change)."""


def check_clients(num_samples: int, num_clients: int, min_samples: int = 1) -> None:
    """Raise unless ``num_clients >= 1`` clients can get ``min_samples`` each from ``num_samples``."""
    check_at_least("num_clients", num_clients, 1)
    if num_clients * min_samples > num_samples:
        raise PartitionError(
            f"cannot give {num_clients} clients at least {min_samples} samples each from "
            f"{num_samples} training samples; lower data.num_clients or data.min_samples"
        )


def check_positive(key: str, value: float, rule: str = "must be > 0") -> None:
    """The one rule for a partitioner's positive ``data.<key>`` (a Dirichlet concentration,
    ...): the partitioners and the config both call it.

    Args:
        key: the name under ``data.`` for the message, e.g. ``"alpha"``.
        value: the setting (NaN fails too).
        rule: what is allowed, for the message.

    Raises:
        PartitionError: ``value`` is not > 0 (``data.<key>=<value> is not allowed: <rule>``).
    """
    if not value > 0:
        raise PartitionError(f"data.{key}={value!r} is not allowed: {rule}")


def check_dirichlet(key: str, value: float) -> None:
    """The one rule for a Dirichlet concentration ``data.<key>`` (alpha, beta): > 0.

    Raises:
        PartitionError: ``data.<key>=<value> is not allowed: Dirichlet <key> must be > 0``.
    """
    check_positive(key, value, f"Dirichlet {key} must be > 0")


def check_at_least(key: str, value: float | None, low: float, allow_none: bool = False) -> None:
    """The one rule for a ``data.<key>`` that must be >= ``low`` (counts >= 1, sigmas >= 0).

    Raises:
        PartitionError: ``value`` < ``low`` (or None unless ``allow_none``), naming
            ``data.<key>``, the value and the bound.
    """
    if value is None and allow_none:
        return
    if value is None or not value >= low:
        raise PartitionError(f"data.{key}={value!r} is not allowed: must be >= {low}")


def apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Split the integer ``total`` in proportion to ``weights`` (largest remainder).

    Args:
        total: the integer to split (>= 0).
        weights: ``(k,)`` non-negative, not all zero.

    Returns:
        ``(k,)`` int64 summing exactly to ``total``; entry i is ``floor`` or ``ceil`` of
        ``total * w_i / sum(w)``.
    """
    share = total * weights / weights.sum()
    out = np.floor(share).astype(np.int64)
    extra = total - int(out.sum())
    out[np.argsort(-(share - out), kind="stable")[:extra]] += 1
    return out


def client_sizes(num_samples: int, num_clients: int, min_samples: int, weights: np.ndarray | None) -> np.ndarray:
    """Client sizes summing to ``num_samples``: ``min_samples`` each, the rest split in
    proportion to ``weights`` (None: as evenly as possible, sizes differ by at most one).

    Giving the minimum first makes every request with ``num_clients * min_samples <=
    num_samples`` succeed at once, for any weights (no redraw loop).

    Raises:
        PartitionError: the minimum cannot be met.
    """
    check_clients(num_samples, num_clients, min_samples)
    rest = num_samples - num_clients * min_samples
    if weights is None:
        weights = np.ones(num_clients)
    return min_samples + apportion(rest, weights)


def lognormal_weights(rng: np.random.Generator, num_clients: int, sigma: float) -> np.ndarray | None:
    """``w_i ~ LogNormal(0, sigma)``, the unbalanced client sizes of FedLab's
    ``lognormal_unbalance_split`` (after Acar et al. 2021); None (balanced) for sigma 0."""
    check_at_least("size_sigma", sigma, 0)
    return rng.lognormal(0.0, sigma, num_clients) if sigma > 0 else None


def sorted_parts(parts) -> list[np.ndarray]:
    """Each client's indices as a sorted int64 array."""
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
