"""The two server steps of the asynchronous loop: per arrival (``apply_async``) or buffered.

Which one runs is the algorithm's choice, through the hooks it has
(:class:`~fedtorch.federation.planning.Hooks`): an algorithm with ``apply_async`` (FedAsync,
Xie et al. 2019) gets :class:`PerArrival`; every other algorithm gets :class:`Buffered`,
FedBuff's server step (Nguyen et al., AISTATS 2022, Alg. 1) around the algorithm's own
synchronous ``aggregate``::

    on each arrival:  Delta_i <- s(tau_i) Delta_i           (s = hooks.staleness_scale)
                      buffer  <- buffer + [message_i]
    at the K-th:      server  <- aggregate(server, ClientMessage.stack(buffer), p)
                      state_i <- after_aggregate(server, state_i)  for each buffered client
                      buffer  <- []

with ``p`` the aggregation weights of ``federation.weighting`` over the K buffered clients
(:func:`~fedtorch.federation.planning.aggregation_weights`; uniform 1/K is the paper's) and
K = ``hooks.buffer_size(default)`` (default: ``AsyncSettings.buffer_size``, else the
concurrency). Staleness enters only by scaling Delta_i before aggregation, as in FedBuff
(x <- x - eta_g (1/K) sum_i s(tau_i) Delta_i for FedAvg's rule under uniform weights); other
message fields (SCAFFOLD's dc_i, ...) are not scaled, and the weights still sum to 1, so a
rule that assumes that (FedExP's, SCAFFOLD's) keeps its meaning. s(0) = 1 exactly and a
scale of 1 leaves the message untouched, so with zero delays and K = concurrency = M every
buffer is one synchronous cohort and the run is the synchronous run bit for bit
(``tests/test_hook_contract.py``).

A client's new state is stored when its update is aggregated (through ``after_aggregate``),
never before: until its buffer is flushed, a re-dispatched client starts from its previous
state, as a client between two synchronous rounds does.
"""

from __future__ import annotations

import dataclasses

from fedtorch.federation.planning import HookError, Hooks, aggregation_weights
from fedtorch.protocol import ClientMessage, ServerState, State

Stored = list[tuple[int, State]]


class PerArrival:
    """``server = apply_async(server, message, staleness)`` for each arrival, then the
    arriving client's ``after_aggregate`` state."""

    buffer_size = 1

    def __init__(self, algorithm, hooks: Hooks):
        self.algorithm, self.hooks = algorithm, hooks

    def arrive(self, server: ServerState, client_id: int, message: ClientMessage, state: State,
               staleness: int) -> tuple[ServerState, Stored]:
        """Apply one arrival; return the new server and the ``(client, state)`` pairs to store."""
        server = self.algorithm.apply_async(server, message, staleness)
        return server, [(client_id, self.hooks.after_aggregate(server, state))]

    @property
    def pending(self) -> list:
        """Arrivals held back for a later step: none."""
        return []

    @pending.setter
    def pending(self, arrivals: list) -> None:
        if arrivals:
            raise ValueError(f"a per-arrival step holds no buffer, got {len(arrivals)} pending arrivals")


class Buffered:
    """FedBuff's buffered step around any synchronous ``aggregate`` (module docstring).

    Args:
        algorithm: the algorithm (its ``aggregate``).
        hooks: its :class:`~fedtorch.federation.planning.Hooks`.
        size: K >= 1, arrivals per server step.
        weighting: ``"samples"`` or ``"uniform"`` (``federation.weighting``).

    Raises:
        ValueError: K < 1 (:func:`check_buffer_size`).
    """

    def __init__(self, algorithm, hooks: Hooks, size: int, weighting: str):
        check_buffer_size(size)
        self.algorithm, self.hooks, self.buffer_size, self.weighting = algorithm, hooks, size, weighting
        self.buffer: list[tuple[int, ClientMessage, State]] = []

    def arrive(self, server: ServerState, client_id: int, message: ClientMessage, state: State,
               staleness: int) -> tuple[ServerState, Stored]:
        """Buffer one arrival; on the K-th, aggregate the buffer and return the states to store."""
        scale = self.hooks.staleness_scale(staleness)
        if scale != 1.0:
            message = dataclasses.replace(message, delta=message.delta * scale)
        self.buffer.append((client_id, message, state))
        if len(self.buffer) < self.buffer_size:
            return server, []
        messages = ClientMessage.stack([m for _, m, _ in self.buffer])
        server = self.algorithm.aggregate(server, messages, aggregation_weights(messages.num_samples, self.weighting))
        stored = [(c, self.hooks.after_aggregate(server, s)) for c, _, s in self.buffer]
        self.buffer = []
        return server, stored

    @property
    def pending(self) -> list[tuple[int, ClientMessage, State]]:
        """The buffered arrivals ``(client, staleness-scaled message, state)`` (for a snapshot)."""
        return list(self.buffer)

    @pending.setter
    def pending(self, arrivals: list[tuple[int, ClientMessage, State]]) -> None:
        self.buffer = [tuple(a) for a in arrivals]


def server_step(algorithm, hooks: Hooks, buffer_size: int | None, concurrency: int, weighting: str):
    """The step an algorithm gets: :class:`PerArrival` if it has ``apply_async``, else
    :class:`Buffered` with K = ``hooks.buffer_size(buffer_size or concurrency)``.

    Raises:
        HookError: ``buffer_size`` given where the algorithm decides K itself
            (:func:`check_buffer_size`).
        ValueError: K < 1.
    """
    check_buffer_size(buffer_size, hooks)
    if hooks.per_arrival:
        return PerArrival(algorithm, hooks)
    return Buffered(algorithm, hooks, hooks.buffer_size(buffer_size or concurrency), weighting)


def check_buffer_size(size: int | None, hooks: Hooks | None = None) -> None:
    """The one rule for a buffer size K (``federation.buffer_size``): null or >= 1, and
    null for an algorithm that applies every arrival (``apply_async``) or sets its own K
    (a ``buffer_size`` hook, e.g. FedBuff's ``algorithm.buffer_size``).

    Args:
        size: K, or None.
        hooks: the algorithm's :class:`~fedtorch.federation.planning.Hooks` (None: check
            the range only). The config passes ``Hooks(algorithm class, "async")``.

    Raises:
        ValueError: K < 1.
        HookError: K given for an algorithm that would ignore it.
    """
    if size is None:
        return
    if not size >= 1:
        raise ValueError(f"federation.buffer_size={size!r} is not allowed: must be null or >= 1")
    if hooks is not None and hooks.per_arrival:
        raise HookError(f"federation.buffer_size={size!r} is not allowed: algorithm {hooks.name!r} "
                        "applies every arrival at once (apply_async) and has no buffer")
    if hooks is not None and hooks.own_buffer:
        raise HookError(f"federation.buffer_size={size!r} is not allowed: algorithm {hooks.name!r} "
                        "sets its own buffer size (algorithm.buffer_size)")
