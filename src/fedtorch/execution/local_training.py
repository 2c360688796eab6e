"""One client's local training: the loop every executor runs (see fedtorch.protocol).

Executors differ in *where* this runs (which replica, device, thread); the loop itself
and the order of hook calls are the same everywhere, which is what makes executors
interchangeable and bit-identical.

Early stopping (``task.ctx.early_stopping`` = patience E_p > 0, the async seed design's
client option): the steps are grouped into passes of ``ceil(n_i / B)`` minibatches (local
epochs); after each pass its mean loss is compared with the best so far, and training stops
once E_p passes in a row have not improved on it (strictly lower). ``finish_local`` then
sees ``run.ctx.num_steps`` equal to the steps actually taken, so the message reports them.
It costs one host sync per epoch and nothing when off.

Where the minibatches and their gradients come from is one object, the executor's
*gradient source* (``gradients``): :class:`MinibatchGradients` by default (shuffled epochs
of B samples, the mean minibatch gradient), or e.g. local DP-SGD's Poisson lots and noisy
clipped gradients (:class:`fedtorch.privacy.LocalDPSGD`). A source's ``for_client(ctx,
device)`` returns the client's :class:`ClientGradients`; every gradient the step takes (at
y, and at other points through ``run.grad_at``) is one ``loss_and_grad`` call of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Iterable, Protocol

import torch

from fedtorch.data.federated import minibatch_indices
from fedtorch.flat import FlatModule
from fedtorch.protocol import Broadcast, ClientResult, ClientTask, LocalRun, RoundContext, State
from fedtorch.seeding import generator


class ClientGradients(Protocol):
    """One client's minibatches and gradients in one round (from a gradient source's
    ``for_client``)."""

    def batches(self, indices: torch.Tensor, batch_size: int, num_steps: int) -> Iterable[torch.Tensor]:
        """The ``num_steps`` minibatches: index tensors into the training data, one per step."""
        ...

    def new_step(self) -> None:
        """Called before each local step."""
        ...

    def loss_and_grad(self, replica: FlatModule, x: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss (0-dim), gradient (P,))`` on the minibatch ``x`` ``(b, ...)``, ``y`` ``(b,)``
        at the replica's current parameters (the gradient may be the replica's buffer,
        overwritten by the next call)."""
        ...


class MinibatchGradients:
    """The default gradient source: minibatches of B drawn as shuffled epochs over the
    client's samples (:func:`~fedtorch.data.federated.minibatch_indices` with
    ``generator(seed, round, client, "minibatch")``), the mean minibatch gradient.

    Attributes:
        serial_only: None (every executor can use it; a source that cannot be vectorised
            over clients names the reason here).
    """

    serial_only: str | None = None

    def for_client(self, ctx: RoundContext, device: torch.device) -> "_Minibatches":
        return _Minibatches(generator(ctx.seed, ctx.round, ctx.client_id, "minibatch"))


class _Minibatches:
    def __init__(self, gen: torch.Generator):
        self.gen = gen

    def batches(self, indices: torch.Tensor, batch_size: int, num_steps: int):
        return minibatch_indices(indices, batch_size, num_steps, self.gen)

    def new_step(self) -> None:
        pass

    def loss_and_grad(self, replica: FlatModule, x, y, loss_fn):
        return replica.loss_and_grad(x, y, loss_fn)


MINIBATCH = MinibatchGradients()


class _EarlyStopping:
    """Patience on the mean loss of each pass of ``steps_per_epoch`` local steps."""

    def __init__(self, patience: int, steps_per_epoch: int, device: torch.device):
        self.patience = patience
        self.steps_per_epoch = steps_per_epoch
        self.best = math.inf
        self.stale = 0
        self.epoch_sum = torch.zeros((), device=device)

    def stop(self, step: int, loss: torch.Tensor) -> bool:
        """Add step ``step``'s loss; at the end of a pass, whether to stop."""
        self.epoch_sum += loss
        if step % self.steps_per_epoch:
            return False
        epoch_loss = self.epoch_sum.item() / self.steps_per_epoch
        self.epoch_sum.zero_()
        if epoch_loss < self.best:
            self.best, self.stale = epoch_loss, 0
        else:
            self.stale += 1
        return self.stale >= self.patience


def train_client(
    algorithm,
    replica: FlatModule,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    task: ClientTask,
    batch_size: int,
    broadcast: Broadcast,
    state: State,
    loss_fn,
    gradients=MINIBATCH,
) -> ClientResult:
    """Run ``task.ctx.num_steps`` local steps of ``algorithm`` on one client (fewer when
    ``task.ctx.early_stopping`` ends it early; see the module docstring).

    Args:
        algorithm: an object implementing :class:`fedtorch.protocol.Algorithm`.
        replica: the model replica to train on (its parameters are overwritten).
        train_x: ``(N, ...)`` training inputs on the replica's device.
        train_y: ``(N,)`` training labels on the replica's device.
        task: the client's :class:`ClientTask`.
        batch_size: B, samples per minibatch.
        broadcast: what the server sent this round.
        state: the client's persistent state (already on the replica's device).
        loss_fn: ``(logits, targets) -> mean loss``.
        gradients: the gradient source (module docstring), :data:`MINIBATCH` by default.

    Returns:
        The :class:`ClientResult` (message, new state, wall seconds).
    """
    start = time.perf_counter()
    ctx = task.ctx
    run = LocalRun(ctx=ctx, broadcast=broadcast, state=state, y=replica.params)
    replica.params.copy_(algorithm.init_local(run))
    statistics = _Statistics(replica, task.buffers if task.buffers is not None else broadcast.buffers)
    batch: list[torch.Tensor] = []
    source = gradients.for_client(ctx, replica.params.device)

    def grad_at(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        saved = replica.params.clone()
        replica.params.copy_(point)
        with statistics.pass_():
            loss, g = source.loss_and_grad(replica, train_x[batch[0]], train_y[batch[0]], loss_fn)
        replica.params.copy_(saved)
        return loss, g.clone()

    def gradient_at_y(idx: torch.Tensor):
        with statistics.pass_():
            return source.loss_and_grad(replica, train_x[idx], train_y[idx], loss_fn)

    run.grad_at = grad_at
    loss_sum = torch.zeros((), device=replica.params.device)
    stopper = _EarlyStopping(ctx.early_stopping, math.ceil(ctx.num_samples / batch_size), loss_sum.device) if ctx.early_stopping else None
    for idx in source.batches(task.indices, batch_size, ctx.num_steps):
        batch[:] = [idx]
        statistics.new_step()
        source.new_step()
        loss = take_step(algorithm, run, lambda: gradient_at_y(idx))
        loss_sum += loss
        if stopper is not None and stopper.stop(run.step, loss):
            run.ctx = dataclasses.replace(ctx, num_steps=run.step)
            break
    mean_loss = loss_sum.item() / max(run.step, 1)
    message, new_state = algorithm.finish_local(run, mean_loss)
    return ClientResult(ctx.client_id, message, new_state, time.perf_counter() - start, statistics.result())


class _Statistics:
    """The replica's buffers (BatchNorm running statistics) during one client's training.

    They start from the client's own (``task.buffers``) or the broadcast's, and only the
    first forward pass of each local step updates them: a step that evaluates the model
    at other points too (SAM's perturbed point, Delta-SGD's previous iterate, through
    ``run.grad_at``) would otherwise count its minibatch two or three times. This is the
    convention of the widely used PyTorch SAM code (github.com/davda54/sam, whose example
    calls ``disable_running_stats``, BatchNorm momentum 0, before the second pass; checked).
    A model without buffers costs nothing.
    """

    def __init__(self, replica: FlatModule, start: torch.Tensor | None):
        self.replica = replica
        self.active = replica.has_buffers
        self.passes = 0
        replica.module.train()
        if self.active:
            if start is None:
                raise ValueError("the model has buffers (BatchNorm statistics) but the broadcast carries none")
            replica.load_buffers(start)

    def new_step(self) -> None:
        self.passes = 0

    @contextlib.contextmanager
    def pass_(self):
        """One forward pass: the step's first updates the buffers, any later one leaves them."""
        saved = self.replica.read_buffers() if self.active and self.passes else None
        try:
            yield
        finally:
            self.passes += 1
            if saved is not None:
                self.replica.load_buffers(saved)

    def result(self) -> torch.Tensor | None:
        return self.replica.read_buffers() if self.active else None


def take_step(algorithm, run: LocalRun, gradient_at_y) -> torch.Tensor:
    """One local step of the protocol (:mod:`fedtorch.protocol`), the same in every
    executor: ``perturb``; the minibatch gradient at y (``gradient_at_y() -> (loss, g)``)
    or at the perturbed point (``run.grad_at``); ``run.loss``; ``direction``;
    ``local_step``; ``run.step += 1``. Returns the step's loss (0-dim, or ``(C,)``)."""
    point = algorithm.perturb(run)
    loss, g = gradient_at_y() if point is None else run.grad_at(point)
    run.loss = loss
    algorithm.local_step(run, algorithm.direction(run, g))
    run.step += 1
    return loss


def train_task(
    algorithm, replica: FlatModule, train_x, train_y, task: ClientTask, batch_size: int, broadcast: Broadcast, state: State, loss_fn,
    gradients=MINIBATCH,
) -> ClientResult:
    """:func:`train_client` with the task's indices and the state moved to the replica's
    device (``broadcast`` and the data must already be there); the new state comes back on
    the CPU, where the client-state store keeps it.

    Args: as :func:`train_client` (``train_x`` ``(N, ...)``, ``train_y`` ``(N,)`` on the
    replica's device; ``task.indices`` ``(n_i,)`` int64 on any device; ``gradients`` the
    gradient source).

    Returns:
        The :class:`ClientResult`: message on the replica's device, state on the CPU,
        ``seconds`` of wall time.
    """
    device = replica.params.device
    state = {k: v.to(device) for k, v in state.items()}
    task = ClientTask(task.ctx, task.indices.to(device), None if task.buffers is None else task.buffers.to(device))
    result = train_client(algorithm, replica, train_x, train_y, task, batch_size, broadcast, state, loss_fn, gradients)
    result.state = {k: v.cpu() for k, v in result.state.items()}
    return result


def broadcast_to(b: Broadcast, device: torch.device) -> Broadcast:
    """The broadcast with its tensors on ``device`` (no copy where they already are)."""
    buffers = None if b.buffers is None else b.buffers.to(device)
    return Broadcast(x=b.x.to(device), extra={k: v.to(device) for k, v in b.extra.items()}, buffers=buffers)
