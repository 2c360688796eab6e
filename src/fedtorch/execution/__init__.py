"""Executors: where and how local training of a set of clients runs.

An executor has ``run(algorithm, broadcast, tasks, states) -> list[ClientResult]``,
``evaluate(x, inputs, targets) -> (loss, accuracy)`` and a one-line ``description``. It
never contains algorithm-specific code: it calls the algorithm's hooks through
:mod:`fedtorch.protocol`.

| mode | executor | what it does |
| --- | --- | --- |
| ``serial`` | :class:`SerialExecutor` | clients one after another (the reference) |
| ``parallel`` | :class:`ParallelExecutor` | worker threads on device slots (``cpu/0``, ``cuda:0/1``) |
| ``vectorized`` | :class:`VectorizedExecutor` | C clients per step with ``torch.func.vmap`` |
| ``auto`` | :func:`build_executor` | picks one of the above and says why |
| ``distributed`` | :class:`~fedtorch.execution.distributed.DistributedExecutor` | a round's clients over torchrun processes, each with one of the above (docs/distributed.md) |
"""

from fedtorch.execution.parallel import ParallelExecutor
from fedtorch.execution.select import EXECUTORS, MODES, build_executor, choose_mode
from fedtorch.execution.serial import SerialExecutor
from fedtorch.execution.slots import Slot, SlotError, parse_slots
from fedtorch.execution.vectorized import VectorizedExecutor

__all__ = [
    "EXECUTORS", "MODES", "build_executor", "choose_mode", "SerialExecutor", "ParallelExecutor",
    "VectorizedExecutor", "Slot", "SlotError", "parse_slots",
]
