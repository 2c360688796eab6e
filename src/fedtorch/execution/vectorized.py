"""The vectorised executor: C clients trained at once with ``torch.func``.

The C clients' iterates are the rows of one ``(C, P)`` tensor. Each local step gathers a
``(C, B, ...)`` minibatch (one row of sample indices per client, padded to B) and computes
all C gradients with one call of ``vmap(grad_and_value(client_loss))`` over the stacked
parameters (``functional_call`` on one module; the module's own weights are not used). The
algorithm's hooks then run once for all C clients, on ``(C, P)`` tensors, following the
vectorised convention of :mod:`fedtorch.protocol`.

Same draws as serial: client i's minibatches are ``minibatch_indices(indices_i, B, K_i,
generator(seed, round, i, "minibatch"))``, exactly as in the serial loop. A last batch of a
pass with fewer than B samples is padded; the padding has weight 0 and the loss is the mean
over the real samples, so the gradient is the serial one.

Masking (clients with fewer steps): step k runs for every client, but client i only takes
steps k < K_i. Clients are sorted by K_i (most first) before chunking, so at step k the
finished clients are a chunk's last rows; the executor saves those rows of ``run.y`` and of
every per-client ``run.buffers`` tensor (2-D with C rows, ``(C, P)`` or ``(C, 1)``: momentum
and other optimiser scratch; a shared 0-dim or ``(P,)`` buffer is not masked, even when
P = C, see :func:`per_client_buffers`) before the hooks run and writes them back after (a
per-client buffer the hooks create at that step gets those rows zeroed), so a finished
client's iterate and optimiser state stay exactly where its last step left them. Its
padded minibatch has weight 0, so its loss (and gradient) is 0 and its mean loss is the
sum over its own K_i steps divided by K_i. Per-step scratch that must survive masking
belongs in ``run.buffers``; ``run.state`` is the client's persistent state and is read
during the steps and replaced by ``finish_local``.

Chunking: the selected clients are trained ``max_clients_per_step`` at a time. The default
is the smaller of (a) as many clients as fit an estimated memory budget (1 GiB on the CPU,
half the free memory on a GPU; ``8 P`` floats per client for iterate, gradient, direction,
optimiser buffers and message, plus the activations one client's minibatch saves for
backward, measured once) and (b) a cache-friendly chunk whose ``(C, P)`` iterate is about
8 MiB, at least 16 clients (:data:`CHUNK_ITERATE_BYTES`, :data:`MIN_CHUNK`).

Speed: for a given chunk size C the gradient function is traced once with ``make_fx``
into a graph of plain ATen ops and that graph is run by ``torch.jit.trace``, which removes
the per-call Python cost of the ``vmap``/``grad`` transforms and of the ops themselves (the
traced graph computes the same ops and is checked against the eager transform, bit for
bit, when it is built; see :func:`traced_gradient`). Models the transforms cannot handle (data-dependent control
flow, in-place updates of inputs, random ops such as dropout, ...) fall back to the serial
loop with a warning that names the reason; :attr:`VectorizedExecutor.fallback` holds it.
So do models with BatchNorm or other buffers: a padded minibatch's batch statistics would
count the padding, and running statistics are updated in place. And so does a gradient
source other than the default (local DP-SGD: per-sample gradients of Poisson lots).

Accuracy: the vectorised forward and backward (batched GEMMs, a padded loss) round
differently from the one-client ones, so results agree with the serial executor to float
tolerance (about 1e-6 relative after 5 rounds of the W1 benchmark), not bit for bit.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedtorch.execution.base import Executor, check_count
from fedtorch.execution.client_stacking import into_rows, padded_minibatches, stack_states, stacked_context
from fedtorch.execution.local_training import broadcast_to, take_step
from fedtorch.execution.row_masking import per_client_buffers, restore_rows, save_rows
from fedtorch.execution.slots import intra_op_threads
from fedtorch.flat import FlatModule, ParamLayout
from fedtorch.protocol import Broadcast, ClientResult, ClientTask, LocalRun, State

# Default chunk: how much memory the C clients of one step may take on the CPU (bytes), and
# how many (P,) vectors each client holds (iterate, gradient, direction, optimiser buffers,
# message), on top of the activations its minibatch saves for backward.
CPU_BUDGET_BYTES = 1 << 30
VECTORS_PER_CLIENT = 8
# Chunks whose (C, P) iterate is about 8 MiB (at least 16 clients) ran fastest on a 2-core
# CPU: W3 (P = 7850) took 0.31-0.35 s/round with 125-500 clients per step, 0.49 with 1000.
CHUNK_ITERATE_BYTES = 8 << 20
MIN_CHUNK = 16

# (Y (C, P), x (C, B, ...), y (C, B), w (C, B)) -> (grad (C, P), loss (C,))
GradFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class VectorizedExecutor(Executor):
    """Train the selected clients in chunks of C clients at once, on ``device``.

    Args:
        *args, **kwargs: those of :class:`~fedtorch.execution.base.Executor`; ``loss_fn``
            is called with ``reduction="none"`` inside ``vmap``.
        max_clients_per_step: C, clients trained at once (default: from the memory
            budget, see the module docstring).
        trace: compile the gradient function per chunk size (default, see
            :func:`traced_gradient`); False calls the ``torch.func`` transforms eagerly
            (slower, same ops).

    Raises:
        ValueError: ``max_clients_per_step`` < 1.
    """

    name = "vectorized"

    def __init__(self, *args, max_clients_per_step: int | None = None, trace: bool = True, **kwargs):
        check_count("max_clients_per_step", max_clients_per_step)
        super().__init__(*args, **kwargs)
        self.trace = trace
        self._eager = _vmapped_gradient(self.replica.module, self.replica.layout, self.loss_fn)
        self._grad_fns: dict[int, GradFn] = {}
        self.fallback = self.gradients.serial_only or vectorization_problem(
            self.replica, self.train_x, self.train_y, self.batch_size, self.loss_fn, self._eager)
        self._warned_early_stopping = False
        if self.fallback is not None:
            warnings.warn(f"vectorized execution: {self.fallback}; falling back to serial execution", RuntimeWarning, stacklevel=2)
            self.max_clients_per_step = 1
            self.description = f"vectorized -> serial fallback on {self.device} ({self.fallback})"
            return
        self.max_clients_per_step = max_clients_per_step or self._chunk_from_budget()
        self.description = f"vectorized on {self.device}, up to {self.max_clients_per_step} clients per step"

    def run(self, algorithm, broadcast: Broadcast, tasks: Sequence[ClientTask], states: Sequence[State]) -> list[ClientResult]:
        """Local training of ``tasks``, ``max_clients_per_step`` clients at a time.

        Returns:
            One :class:`ClientResult` per task, in task order; messages on :attr:`device`,
            states on the CPU. ``seconds`` is the chunk's wall time divided by its size.

        Raises:
            ValueError: the tasks mix rounds or seeds, or the clients' states have
                different keys.
        """
        if self.fallback is not None:
            return self.run_one_by_one(algorithm, broadcast, tasks, states)
        if any(t.ctx.early_stopping for t in tasks):
            self._warn_early_stopping()
            return self.run_one_by_one(algorithm, broadcast, tasks, states)
        bcast = broadcast_to(broadcast, self.device)
        # Most steps first: a chunk holds clients of similar K_i (less padded work) and its
        # finished clients are always its last rows (masking is a slice, not a gather).
        order = sorted(range(len(tasks)), key=lambda i: -tasks[i].ctx.num_steps)
        results: list[ClientResult | None] = [None] * len(tasks)
        rows: dict[str, torch.Tensor] = {}  # per message tensor field, the round's (M, ...) rows in task order
        with intra_op_threads(self.threads), torch.no_grad():
            step = self.max_clients_per_step
            for start in range(0, len(order), step):
                chunk = order[start : start + step]
                trained = self._train_chunk(algorithm, bcast, [tasks[i] for i in chunk], [states[i] for i in chunk])
                for i, result in zip(chunk, into_rows(rows, chunk, len(tasks), trained)):
                    results[i] = result
        return results  # type: ignore[return-value]

    # ---- internals ------------------------------------------------------------------
    def _warn_early_stopping(self) -> None:
        """Early stopping decides per client and per epoch whether to go on; the vectorised
        step does not implement that, so such tasks run one client at a time (the serial
        executor's results); say so once."""
        if not self._warned_early_stopping:
            self._warned_early_stopping = True
            warnings.warn(
                "vectorized execution: local early stopping (client.early_stopping > 0) is not vectorised; "
                "those clients are trained one at a time, as by the serial executor", RuntimeWarning, stacklevel=4,
            )

    def _chunk_from_budget(self) -> int:
        if self.device.type == "cuda":
            budget = torch.cuda.mem_get_info(self.device)[0] // 2
        else:
            budget = CPU_BUDGET_BYTES
        per_client = VECTORS_PER_CLIENT * self.replica.layout.nbytes() + saved_activation_bytes(
            self.replica, self.train_x[: self.batch_size], self.train_y[: self.batch_size], self.loss_fn
        )
        cache_friendly = max(MIN_CHUNK, CHUNK_ITERATE_BYTES // self.replica.layout.nbytes())
        return max(1, min(budget // per_client, cache_friendly))

    def _grad_fn(self, count: int, example: tuple[torch.Tensor, ...]) -> GradFn:
        fn = self._grad_fns.get(count)
        if fn is None:
            fn = self._eager
            if self.trace:
                fn = traced_gradient(self._eager, example) or self._eager
            self._grad_fns[count] = fn
        return fn

    def _train_chunk(self, algorithm, bcast: Broadcast, tasks: Sequence[ClientTask], states: Sequence[State]) -> list[ClientResult]:
        start = time.perf_counter()
        count, dev = len(tasks), self.device
        ctx = stacked_context(tasks, dev)
        steps = [t.ctx.num_steps for t in tasks]  # non-increasing (run() sorts)
        steps_dev = ctx.num_steps.view(-1)
        index, weight = padded_minibatches(tasks, self.batch_size, dev)
        y = torch.empty(count, self.replica.layout.numel, dtype=self.replica.params.dtype, device=dev)
        run = LocalRun(ctx=ctx, broadcast=bcast, state=stack_states(states, dev), y=y)
        y.copy_(algorithm.init_local(run))
        batch: list[torch.Tensor] = []
        fn: GradFn | None = None

        def grad_at(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            g, loss = fn(point.expand_as(y).contiguous(), *batch)
            return loss, g

        run.grad_at = grad_at
        loss_sum = torch.zeros(count, device=dev)
        fn = self._grad_fn(count, (y, self.train_x[index[0]], self.train_y[index[0]], weight[0])) if steps[0] else None
        for k in range(steps[0] if steps else 0):
            idx = index[k]
            batch[:] = [self.train_x[idx], self.train_y[idx], weight[k]]
            active = sum(1 for n in steps if n > k)  # rows active..count-1 have taken all their steps
            saved = save_rows(run, active) if active < count else None
            loss_sum += take_step(algorithm, run, lambda: fn(y, *batch)[::-1])
            if saved is not None:
                restore_rows(run, active, saved)
            else:
                per_client_buffers(run)  # the same shape check at every step, masked or not
        mean_loss = (loss_sum / steps_dev.clamp(min=1)).unsqueeze(1)
        message, new_state = algorithm.finish_local(run, mean_loss)
        messages = message.unstack()
        seconds = (time.perf_counter() - start) / count
        new_state = {key: v.to("cpu") for key, v in new_state.items()}  # one transfer per key
        return [
            ClientResult(t.ctx.client_id, m, {key: v[i].clone() for key, v in new_state.items()}, seconds)
            for i, (t, m) in enumerate(zip(tasks, messages))
        ]


# ---- building blocks (pure functions) ------------------------------------------------
def _vmapped_gradient(module: nn.Module, layout: ParamLayout, loss_fn) -> GradFn:
    """``(Y (C, P), x (C, B, ...), y (C, B), w (C, B)) -> (grad (C, P), loss (C,))``.

    Client c's loss is ``sum_b w[c, b] * loss_fn(f(Y[c], x[c, b]), y[c, b]) / max(sum_b
    w[c, b], 1)``: the mean over its real samples (w = 1), 0 for a padded-out client.
    """
    def client_loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        per_sample = loss_fn(functional_call(module, params, (x,)), y, reduction="none")
        return (per_sample * w).sum() / w.sum().clamp(min=1)

    per_client = vmap(grad_and_value(client_loss))

    def gradient(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor):
        grads, loss = per_client(layout.unflatten(flat), x, y, w)
        return layout.cat(grads), loss

    return gradient


def traced_gradient(eager: GradFn, example: tuple[torch.Tensor, ...]) -> GradFn | None:
    """``eager`` compiled for the shapes of ``example``, or None if that fails.

    ``make_fx`` records the ATen ops the ``vmap``/``grad`` transforms issue as an FX graph;
    ``torch.jit.trace`` of that graph then runs those same ops from C++, without Python
    per op (for small models that overhead is most of a step). The result is checked to
    reproduce the eager transform bit for bit on ``example`` (three calls, past the JIT's
    profiling runs); if the JIT is unavailable the FX graph is used, if tracing fails, None.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    try:
        graph = make_fx(eager)(*example)
        graph.graph.eliminate_dead_code()
        graph.recompile()
    except Exception:  # tracing is an optimisation; the eager transform stays correct
        return None
    want = eager(*example)
    for candidate in (_jit(graph, example), graph):
        if candidate is not None and all(_same(want, candidate(*example)) for _ in range(3)):
            return candidate
    return None


def _jit(graph, example):
    try:
        with warnings.catch_warnings():  # deprecated in favour of torch.compile, still the
            warnings.simplefilter("ignore", DeprecationWarning)  # cheapest way to run a graph
            return torch.jit.trace(graph, example, check_trace=False)
    except Exception:
        return None


def _same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def vectorization_problem(replica: FlatModule, train_x, train_y, batch_size: int, loss_fn, eager: GradFn | None = None) -> str | None:
    """Why ``torch.func`` cannot train this model on 2 clients at once, or None if it can.

    Runs the vmapped gradient (``eager``; built from ``replica`` if None) on two copies of
    the current weights, on two minibatches of ``min(batch_size, 2)`` samples of
    ``train_x`` (``(N, ...)``) and ``train_y`` (``(N,)``) (the first ones, then the next;
    one if N is smaller), and checks it against ``replica.loss_and_grad`` on the same
    minibatch. A model whose result depends on the batch of clients (e.g. through in-place
    module state) changes the loss, or the gradient on every minibatch. Batched kernels
    sum in another order: float32 rounding, about 1e-6 of the gradient's norm, which on a
    rare minibatch flips a max-pooling choice between two near-equal inputs and moves that
    pixel's gradient (0.5 % of the norm for the FedAvg CNN on 1 draw in 200); so one
    minibatch's gradient alone does not decide.
    """
    name = type(replica.module).__name__
    batch_norm = sorted({type(m).__name__ for m in replica.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)})
    if batch_norm or replica.has_buffers:
        what = ", ".join(batch_norm) if batch_norm else "buffers"
        return (f"model {name} has {what}: batch statistics of a padded minibatch would count the padding and "
                "running statistics are updated in place")
    if eager is None:
        eager = _vmapped_gradient(replica.module, replica.layout, loss_fn)
    n = min(batch_size, len(train_y), 2)
    gradients_differ = []
    for start in range(0, 2 * n if len(train_y) >= 2 * n else n, n):
        try:
            loss_gap, grad_gap = _probe(replica, eager, train_x[start:start + n], train_y[start:start + n], loss_fn)
        except Exception as e:
            return f"model {name} cannot be vectorised with torch.func ({type(e).__name__}: {str(e).splitlines()[0]})"
        if loss_gap > 1e-5:
            return f"model {name} gives a different loss under torch.func.vmap than when run alone"
        gradients_differ.append(grad_gap > 1e-4)
    if all(gradients_differ):
        return f"model {name} gives different gradients under torch.func.vmap than when run alone"
    return None


def _probe(replica: FlatModule, eager: GradFn, x, y, loss_fn) -> tuple[float, float]:
    """Relative gaps (loss, gradient norm) between the vmapped gradient of 2 clients at the
    replica's weights on minibatch ``x``, ``y`` and the replica's own."""
    flat = replica.params.detach().clone().expand(2, -1).contiguous()
    w = torch.ones(2, len(y), dtype=flat.dtype, device=flat.device)
    g, loss = eager(flat, x.expand(2, *x.shape), y.expand(2, *y.shape), w)
    with torch.enable_grad():
        ref_loss, ref_g = replica.loss_and_grad(x, y, loss_fn)
    ref_loss = float(ref_loss)
    loss_gap = max(abs(float(v) - ref_loss) for v in loss.reshape(-1)) / (abs(ref_loss) + 1e-12)
    grad_gap = max(float((g[i] - ref_g).norm()) for i in range(2)) / (float(ref_g.norm()) + 1e-12)
    return loss_gap, grad_gap


def saved_activation_bytes(replica: FlatModule, x: torch.Tensor, y: torch.Tensor, loss_fn) -> int:
    """Bytes the autograd graph of one client's minibatch ``x`` (``(B, ...)``), ``y``
    (``(B,)``) saves for backward (what one more client in a chunk costs in activations)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        replica.loss_and_grad(x, y, loss_fn)
    return total
