"""The settings of an asynchronous run and their rules (one place, used by the loop and the
config): :class:`AsyncSettings`, the clients in flight, the clock, and the simulated times.
See :mod:`fedtorch.federation.async_loop` for the loop itself."""

from __future__ import annotations

from dataclasses import dataclass

from fedtorch.federation.planning import LocalWork
from fedtorch.federation.server_steps import check_buffer_size

CLOCKS = ("simulated", "asyncio", "wall")  # wall: real arrivals across processes (fedtorch.federation.wallclock_async)


@dataclass(frozen=True, kw_only=True)
class AsyncSettings(LocalWork):
    """Schedule of an asynchronous run: the shared :class:`~fedtorch.federation.planning.LocalWork`
    (``lr`` is gamma_0, the rate before the delay discount; ``weighting`` weighs a buffer's
    clients) plus

    Attributes:
        updates: stop once ``server.round`` (global-model versions) reaches this.
        concurrency: clients in flight at once, in ``[1, N]``.
        lr_delay_alpha: alpha_lr >= 0 of gamma = gamma_0 / (1 + alpha_lr * duration seconds).
        buffer_size: K of the buffered server step (None: the algorithm's
            ``buffer_size`` hook, else ``concurrency``); must be None for a per-arrival rule.
        eval_every: evaluate the global model every this many versions (and at ``updates``).
        max_seconds: simulated-time limit in seconds, or None.

    Raises:
        ValueError: a bad buffer size, a negative ``lr_delay_alpha`` or ``max_seconds`` <= 0.
    """

    updates: int
    concurrency: int
    lr_delay_alpha: float = 0.0
    buffer_size: int | None = None
    eval_every: int = 1
    max_seconds: float | None = None

    def __post_init__(self):
        super().__post_init__()
        check_buffer_size(self.buffer_size)
        check_async_times(self.lr_delay_alpha, self.max_seconds)


def check_concurrency(concurrency: int, num_clients: int) -> None:
    """The one rule for the clients in flight (``federation.concurrency``): 1 <= C <= N.

    Raises:
        ValueError: C outside ``[1, num_clients]``.
    """
    if not 1 <= concurrency <= num_clients:
        raise ValueError(f"federation.concurrency={concurrency!r} is not allowed: "
                         f"clients in flight must be in [1, data.num_clients={num_clients}]")


def check_async_times(lr_delay_alpha: float, max_seconds: float | None) -> None:
    """The rules for ``client.lr_delay_alpha`` (>= 0) and ``federation.max_seconds`` (null or > 0).

    Raises:
        ValueError: a value outside those ranges.
    """
    if not lr_delay_alpha >= 0:
        raise ValueError(f"client.lr_delay_alpha={lr_delay_alpha!r} is not allowed: must be >= 0 (0: no delay discount)")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"federation.max_seconds={max_seconds!r} is not allowed: must be null or > 0 seconds")


def check_clock(clock: str, sleep_scale: float) -> None:
    """The rules for ``federation.clock`` (:data:`CLOCKS`) and ``federation.sleep_scale`` (>= 0).

    Raises:
        ValueError: an unknown clock or a negative sleep scale.
    """
    if clock not in CLOCKS:
        raise ValueError(f"federation.clock: unknown value {clock!r}; allowed: {', '.join(sorted(CLOCKS))}")
    if not sleep_scale >= 0:
        raise ValueError(f"federation.sleep_scale={sleep_scale!r} is not allowed: must be >= 0 (real seconds per simulated second)")
