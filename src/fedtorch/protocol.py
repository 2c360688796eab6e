"""The contracts between the three axes: algorithm, executor and federation loop.

This module holds only data types and the :class:`Algorithm` protocol. Algorithms
implement the protocol (``fedtorch.algorithms``); executors call its client hooks
(``fedtorch.execution``); the federation loop calls its server hooks
(``fedtorch.federation``). None of those packages imports another: they meet here.

Calling protocol for one client in one round (executors implement exactly this loop,
see :func:`fedtorch.execution.local_training.train_client`)::

    run = LocalRun(ctx, broadcast, state, y=<replica params>)
    run.y.copy_(algorithm.init_local(run))           # y_0
    for each minibatch k = 0 .. K_i - 1:
        point = algorithm.perturb(run)               # None: gradient at y
        loss, g = grad f_i(point or y)               # g: (P,) or (C, P)
        run.loss = loss                              # the step's minibatch loss
        d = algorithm.direction(run, g)              # corrected gradient
        algorithm.local_step(run, d)                 # y <- y - step(d), in place
        run.step += 1
    message, new_state = algorithm.finish_local(run)

Server side, once per round with the messages of the selected clients stacked::

    server = algorithm.aggregate(server, ClientMessage.stack(msgs), weights)

Early stopping (``ctx.early_stopping`` > 0, see :func:`fedtorch.execution.local_training.train_client`):
the executor may end local training before K_i steps; it then calls ``finish_local`` with
``run.ctx.num_steps`` replaced by the steps actually taken, so messages report (and hooks
that use K_i compute with) the work really done.

Asynchronous runs (``fedtorch.federation.async_loop``) use one of two server steps
(``fedtorch.federation.server_steps``):

* per arrival, for an algorithm with the optional hook
  ``server = algorithm.apply_async(server, message, staleness)`` (FedAsync): called once per
  arriving client, in simulated arrival order, with one unstacked message and ``staleness`` =
  server version (``server.round``) at arrival minus the version the client started from;
* buffered, for every other algorithm (FedBuff, Nguyen et al. 2022, and any synchronous
  rule): K arrivals (``buffer_size(default)``, default the concurrency) are collected, each
  delta scaled by ``staleness_scale(tau)`` (default 1/sqrt(1 + tau)), and the algorithm's own
  ``aggregate`` runs over the stacked buffer, then ``after_aggregate`` for its clients. With
  zero delays and K = concurrency = M this is the synchronous round, bit for bit.

All tensors are flat: ``(P,)`` for one client, or ``(C, P)`` with a leading client
dimension; hooks must work for both (reduce with ``dim=-1``, ``keepdim=True``).

Vectorised convention (an executor training C clients at once): ``run.y`` is ``(C, P)``;
``run.broadcast`` is unchanged (``x`` is ``(P,)`` and broadcasts); every tensor of
``run.state`` has a leading ``C``; the per-client fields of ``run.ctx`` (``client_id``,
``num_samples``, ``num_steps``) are ``(C, 1)`` tensors, ``lr`` may be a float or ``(C, 1)``;
``run.step`` is the common step index k (an int) and the executor masks out clients with
k >= K_i (it restores their rows of ``run.y`` and of every per-client ``run.buffers``
tensor after the step: per-client buffers are 2-D with C rows, ``(C, P)`` or ``(C, 1)``;
shared ones are 0-dim or ``(P,)`` and are not masked; any other buffer with C leading rows,
such as ``(C,)``, is refused; ``finish_local`` gets the mean losses as a ``(C, 1)`` tensor).
Hooks therefore use ``run.ctx.num_steps`` (not ``run.step``) for K_i, write
arithmetic that works for a number or a ``(C, 1)`` tensor, and return a message whose
tensor fields have the leading ``C``; the executor splits it with
:meth:`ClientMessage.unstack`.

Optional hooks (``fedtorch.algorithms.base.FedAlgorithm`` gives the defaults; the
federation loop falls back to them for objects that lack one):

* ``num_local_steps(round, client_id, seed, default) -> K_i``: the federation loop asks
  it for every selected client (Scaffnew draws a random step count here).
* ``after_aggregate(server, state) -> state``: a participating client's state once the
  new global model exists (Scaffnew's h_i needs x^{t+1}); the loop stores what it returns.
* ``eval_model(server) -> (P,)``: the model the test set evaluates (FedExP may average
  the last two global iterates).
* ``personalization() -> Personalization | None``: how per-client evaluation fine-tunes
  the global model before measuring personalised accuracy (Per-FedAvg).
* ``buffer_size(default) -> K`` and ``staleness_scale(staleness) -> float``: the buffered
  asynchronous server step (FedBuff).

Both loops reach these hooks only through ``fedtorch.federation.planning.Hooks``, which also
refuses an algorithm that lacks a hook the loop needs.

Algorithms that need facts about the whole federation (N for SCAFFOLD and FedDyn, eta_l
for FedCM's server side) receive a :class:`FederationInfo` at construction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import Tensor

from fedtorch.messages import ClientMessage, _nbytes

__all__ = ["Algorithm", "Broadcast", "ClientMessage", "ClientResult", "ClientTask", "FederationInfo", "LocalRun",
           "Personalization", "RoundContext", "ServerState", "State"]

State = dict[str, Tensor]


@dataclass(frozen=True)
class RoundContext:
    """What a client knows about its task this round (immutable).

    Attributes:
        round: round index t (0-based).
        client_id: the client's id in ``[0, N)``.
        seed: the run's training seed (``seed``), for deriving generators.
        num_samples: n_i, the client's training samples.
        num_steps: K_i, local steps this round (epochs x ceil(n_i / batch), or fixed).
        lr: eta_l, the local learning rate this round.
        early_stopping: stop local training once the mean loss of a pass over the
            client's data (an epoch) has not improved for this many epochs; 0: never.
    """

    round: int
    client_id: int
    seed: int
    num_samples: int
    num_steps: int
    lr: float
    early_stopping: int = 0


@dataclass(frozen=True)
class FederationInfo:
    """Facts about the federation an algorithm may need at construction.

    Attributes:
        num_clients: N, the total number of clients.
        lr: eta_l, the configured local learning rate.
        weighting: ``federation.weighting``: ``"samples"`` (the objective is
            sum_i (n_i / n) f_i over all N clients) or ``"uniform"`` ((1/N) sum_i f_i).
        total_samples: n = sum_i n_i over all N clients (None: unknown, then
            ``"samples"`` falls back to uniform population weights).
        mean_local_steps: mean K_i over the N clients under the configured schedule
            (epochs x ceil(n_i / B), or the fixed ``local_steps``); None: unknown.
    """

    num_clients: int
    lr: float
    weighting: str = "samples"
    total_samples: int | None = None
    mean_local_steps: float | None = None

    def population_weights(self, num_samples: Tensor, num_clients: Tensor | int = 1) -> Tensor:
        """q_i of the aggregated rows in the federation's objective sum_i q_i f_i.

        ``(M,)`` float64: n_i / n under ``"samples"`` (when ``total_samples`` is known),
        else c_i / N, with c_i the clients a row combines (``ClientMessage.num_clients``:
        1 for a client, an edge's count for its row, :mod:`fedtorch.edge_sums`). Unlike
        the round's p_i they do not sum to 1 over a partial cohort: a drift-corrected
        method that keeps c = sum_{all i} q_i c_i adds sum_{i in S} q_i dc_i
        (Karimireddy et al. 2020, Alg. 1: (M/N) mean dc under uniform).
        """
        n = num_samples.to(torch.float64)
        if self.weighting == "samples" and self.total_samples:
            return n / self.total_samples
        return torch.as_tensor(num_clients).to(n).expand_as(n) / self.num_clients


@dataclass(frozen=True)
class Broadcast:
    """What the server sends down: the global model and algorithm extras.

    Attributes:
        x: ``(P,)`` global model x^t.
        extra: named flat tensors (e.g. SCAFFOLD's server control variate ``c``).
        buffers: ``(Q,)`` the global model's buffers (BatchNorm statistics), set by the
            federation loop, not by the algorithm; None for a model without buffers.
    """

    x: Tensor
    extra: State = field(default_factory=dict)
    buffers: Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes sent to one client."""
        extra = sum(_nbytes(t) for t in self.extra.values())
        return _nbytes(self.x) + extra + (0 if self.buffers is None else _nbytes(self.buffers))


@dataclass(frozen=True)
class ServerState:
    """The whole server state; resuming a run is loading this one value.

    Attributes:
        x: ``(P,)`` global model.
        opt: server-optimiser state (e.g. momentum ``v``), named flat tensors.
        extra: algorithm state (e.g. SCAFFOLD's ``c``), named flat tensors.
        round: number of completed rounds (server updates).
        buffers: ``(Q,)`` the global model's buffers (BatchNorm statistics), kept by the
            federation loop (:mod:`fedtorch.federation.model_buffers`); None for a model
            without buffers. An algorithm's ``server.replace(...)`` carries it along.
        loop: state of the federation loop's message transforms (robust aggregation's
            centre, ...), named flat tensors; never read by an algorithm.
    """

    x: Tensor
    opt: State = field(default_factory=dict)
    extra: State = field(default_factory=dict)
    round: int = 0
    buffers: Tensor | None = None
    loop: State = field(default_factory=dict)

    def replace(self, **changes) -> "ServerState":
        return dataclasses.replace(self, **changes)


@dataclass
class LocalRun:
    """Mutable scratch of one client's local training in one round.

    Lives only inside an executor while the client trains. Hooks read and update it.

    Attributes:
        ctx: the :class:`RoundContext`.
        broadcast: what the server sent (``broadcast.x`` is x^t; do not modify).
        state: the client's persistent state (empty dict before first participation
            for algorithms without state); ``finish_local`` returns the new one.
        y: ``(P,)`` current local iterate y_{i,k}. It *is* the model replica's
            parameter buffer: update it in place.
        step: k, the number of local steps already taken.
        buffers: per-round scratch (momentum buffer, previous iterate, ...).
        grad_at: ``point -> (loss, grad)`` on the current minibatch at another point
            (for SAM-type methods); the returned grad is a fresh tensor.
        loss: the current step's minibatch loss (0-dim, or ``(C,)`` vectorised) at the
            point its gradient was taken, set by the executor before ``direction``.
    """

    ctx: RoundContext
    broadcast: Broadcast
    state: State
    y: Tensor
    step: int = 0
    buffers: State = field(default_factory=dict)
    grad_at: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None
    loss: Tensor | None = None


class Algorithm(Protocol):
    """An FL algorithm: client hooks plus a server rule, as pure-ish tensor functions.

    An algorithm never loops over clients and never touches devices, threads or files.
    ``fedtorch.algorithms.base.FedAlgorithm`` gives the FedAvg defaults of every hook and
    documents each one (shapes, when it is called). ``num_local_steps``,
    ``after_aggregate``, ``eval_model`` and ``personalization`` may be left out by an
    object that is not a ``FedAlgorithm``: the federation loops then use K_i from the
    schedule, keep client states unchanged, evaluate ``server.x`` and skip
    personalisation. ``apply_async`` (FedAsync, Xie et al. 2019) is optional too: without
    it ``federation.mode=async`` runs the buffered server step over ``aggregate``.
    """

    name: str

    def init_server(self, x0: Tensor) -> ServerState: ...
    def init_client(self, x0: Tensor) -> State: ...
    def broadcast(self, server: ServerState) -> Broadcast: ...
    def init_local(self, run: LocalRun) -> Tensor: ...
    def perturb(self, run: LocalRun) -> Tensor | None: ...
    def direction(self, run: LocalRun, g: Tensor) -> Tensor: ...
    def local_step(self, run: LocalRun, d: Tensor) -> None: ...
    def finish_local(self, run: LocalRun, loss: float) -> tuple[ClientMessage, State]: ...
    def aggregate(self, server: ServerState, messages: ClientMessage, weights: Tensor) -> ServerState: ...
    def num_local_steps(self, round: int, client_id: int, seed: int, default: int) -> int: ...
    def after_aggregate(self, server: ServerState, state: State) -> State: ...
    def eval_model(self, server: ServerState) -> Tensor: ...
    def personalization(self) -> "Personalization | None": ...


@dataclass(frozen=True)
class Personalization:
    """How a personalised model is made from the global one for per-client evaluation.

    Attributes:
        algorithm: the algorithm whose local training fine-tunes (usually plain SGD).
        steps: local steps of fine-tuning on the client's training split.
        lr: fine-tuning step size.
    """

    algorithm: Algorithm
    steps: int
    lr: float


@dataclass(frozen=True)
class ClientTask:
    """One client's job for one round, as the federation loop hands it to an executor.

    Attributes:
        ctx: the :class:`RoundContext`.
        indices: ``(n_i,)`` int64 indices of the client's samples in the training tensors.
        buffers: ``(Q,)`` the client's own model buffers to start from
            (``model.local_buffers``); None: the broadcast's.
    """

    ctx: RoundContext
    indices: Tensor
    buffers: Tensor | None = None


@dataclass
class ClientResult:
    """An executor's answer for one client.

    Attributes:
        client_id: the client.
        message: its :class:`ClientMessage`.
        state: its new persistent state (empty dict if the algorithm keeps none).
        seconds: wall-clock seconds of its local training.
        buffers: ``(Q,)`` the model's buffers after local training (BatchNorm statistics
            of the client's data), on the message's device; None for a model without.
    """

    client_id: int
    message: ClientMessage
    state: State
    seconds: float
    buffers: Tensor | None = None
