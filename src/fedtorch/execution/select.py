"""Building an executor from ``execution.*`` settings, and ``mode=auto``'s choice.

``auto`` decides from facts about the model and the machine that do not change between
runs (so the same config always picks the same engine, and results stay reproducible):

1. a device list (``execution.devices``) -> ``parallel`` on those slots (the user asked for
   workers);
2. the model vectorises and one client step is cheap (fewer than
   :data:`VECTORIZE_MAX_FLOPS` floating-point operations for forward and backward of one
   minibatch, counted with ``torch.utils.flop_counter``) -> ``vectorized``: such steps are
   dominated by per-op overhead, which training C clients per call divides by C;
3. otherwise, with two or more CPU threads or a GPU -> ``parallel`` on two slots of
   ``device``: expensive steps keep a worker busy, so workers overlap well;
4. otherwise ``serial``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from fedtorch.execution.parallel import ParallelExecutor
from fedtorch.execution.serial import SerialExecutor
from fedtorch.execution.slots import parse_slots
from fedtorch.execution.vectorized import VectorizedExecutor, vectorization_problem
from fedtorch.flat import FlatModule

EXECUTORS = {"serial": SerialExecutor, "parallel": ParallelExecutor, "vectorized": VectorizedExecutor}
MODES = (*EXECUTORS, "auto", "distributed")  # distributed: under torchrun, fedtorch.execution.distributed

# Measured on a 2-core CPU (docs/performance.md): the vectorised executor is 5-10x faster
# than serial on logistic regression (0.3 MFLOP per step at B=10), but 1.1-1.7x slower on
# the 2NN MLP (12 MFLOP at B=10, 38 at B=32) and 2x slower on the FedAvg CNN (2.4 GFLOP
# at B=32): once a step is compute-bound, the (C, P) tensors of C clients fall out of the
# caches. Not calibrated on a GPU, where per-op overhead is larger and the crossover higher.
VECTORIZE_MAX_FLOPS = 5e6


def build_executor(mode: str, *args, devices: Sequence[str] | None = None, max_clients_per_step: int | None = None, **kwargs):
    """The executor for ``execution.mode``; ``auto`` picks one (see the module docstring)
    and prefixes its ``description`` with the choice and the reason.

    Args:
        mode: ``serial``, ``parallel``, ``vectorized``, ``auto`` or ``distributed`` (then also
            ``worker_mode``, ``server_trains`` and ``session``, see :func:`_distributed`).
        *args, **kwargs: the executors' common arguments (``model_factory, train_x,
            train_y, batch_size, loss_fn, device="cpu", threads=None``; see
            :class:`~fedtorch.execution.base.Executor`).
        devices: the parallel executor's slots (``auto`` and ``parallel`` only).
        max_clients_per_step: the vectorised executor's chunk size.

    Raises:
        ValueError: unknown ``mode`` (message lists the allowed ones).
        SlotError: bad ``devices``.
    """
    if mode == "distributed":  # each rank trains with a local executor of execution.worker_mode
        return _distributed(*args, devices=devices, max_clients_per_step=max_clients_per_step, **kwargs)
    reason = None
    if mode == "auto":
        mode, reason = choose_mode(*args, devices=devices, **kwargs)
    if mode not in EXECUTORS:
        raise ValueError(f"execution.mode: unknown value {mode!r}; allowed: {', '.join(MODES)}")
    if mode == "parallel":
        kwargs["devices"] = devices
    if mode == "vectorized":
        kwargs["max_clients_per_step"] = max_clients_per_step
    executor = EXECUTORS[mode](*args, **kwargs)
    if reason is not None:
        executor.description = f"auto picked {mode} ({reason}): {executor.description}"
    return executor


def _distributed(*args, worker_mode: str = "serial", server_trains: bool = True, session=None, **kwargs):
    """The :class:`~fedtorch.execution.distributed.DistributedExecutor` of a started
    ``session`` (:mod:`fedtorch.execution.distributed_setup`) around a local executor of
    ``worker_mode`` (``serial``, ``parallel`` or ``vectorized``) built from ``args``/``kwargs``.

    Raises:
        ValueError: no session, or ``worker_mode`` not one of :data:`EXECUTORS`.
    """
    from fedtorch.execution.distributed import DistributedExecutor

    if session is None:
        raise ValueError("execution.mode=distributed needs a started torch.distributed session (run it under torchrun)")
    if worker_mode not in EXECUTORS:
        raise ValueError(f"execution.worker_mode: unknown value {worker_mode!r}; allowed: {', '.join(EXECUTORS)}")
    local = build_executor(worker_mode, *args, **kwargs)
    return DistributedExecutor(local, session.env.rank, session.env.world_size, control=session.control,
                               data=session.data, server_trains=server_trains, timeout_s=session.timeout_s,
                               edges=session.edges)


def step_flops(replica: FlatModule, x: torch.Tensor, y: torch.Tensor, loss_fn) -> int:
    """Floating-point operations of one client step: forward and backward of the minibatch
    ``x`` (``(B, ...)``), ``y`` (``(B,)``), as ``torch.utils.flop_counter`` counts them
    (a multiply-add is 2)."""
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        replica.loss_and_grad(x, y, loss_fn)
    return counter.get_total_flops()


def choose_mode(
    model_factory, train_x, train_y, batch_size: int, loss_fn, device: str = "cpu", *, devices=None, threads=None,
    gradients=None,
) -> tuple[str, str]:
    """``(mode, reason)`` for ``execution.mode=auto`` (rules in the module docstring);
    takes :func:`build_executor`'s arguments (``threads`` does not enter the choice; a
    ``gradients`` source that is serial-only rules out ``vectorized``).

    Raises:
        SlotError: bad ``devices``.
        RuntimeError, ValueError: the model cannot run one minibatch of ``train_x``
            (e.g. an input shape it does not accept).
    """
    if devices is not None:
        n = len(parse_slots(devices))
        return "parallel", f"{n} worker slot{'s' if n != 1 else ''} listed in execution.devices"
    dev = torch.device(device)
    replica = FlatModule(model_factory().to(dev))
    x, y = train_x[:batch_size].to(dev), train_y[:batch_size].to(dev)
    flops = step_flops(replica, x, y, loss_fn)
    problem = getattr(gradients, "serial_only", None) or vectorization_problem(replica, x, y, batch_size, loss_fn)
    cost = f"{flops / 1e6:.1f} MFLOP per client step"
    if problem is None and flops < VECTORIZE_MAX_FLOPS:
        return "vectorized", f"the model vectorises and {cost} < {VECTORIZE_MAX_FLOPS / 1e6:.0f}: per-step overhead dominates"
    why = problem or f"{cost} >= {VECTORIZE_MAX_FLOPS / 1e6:.0f}: compute dominates"
    if dev.type == "cuda" or torch.get_num_threads() >= 2:
        return "parallel", f"{why}; two workers share the {'GPU' if dev.type == 'cuda' else 'CPU cores'}"
    return "serial", f"{why}; one CPU thread, nothing to run side by side"
