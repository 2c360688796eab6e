"""The serial executor: clients one after another on one model replica.

It is the reference every other executor must match bit-for-bit (or, for vectorised
execution, within float tolerance).
"""

from __future__ import annotations

from typing import Sequence

from fedtorch.execution.base import Executor
from fedtorch.protocol import Broadcast, ClientResult, ClientTask, State


class SerialExecutor(Executor):
    """Train the selected clients sequentially on ``device``.

    Constructor arguments: those of :class:`~fedtorch.execution.base.Executor`. With
    ``threads`` equal to the parallel executor's per-slot count, the parallel executor
    matches this one bit for bit.
    """

    name = "serial"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        count = f"{self.threads} intra-op thread(s)" if self.threads else "the process's intra-op threads"
        self.description = f"serial on {self.device} ({count})"

    def run(self, algorithm, broadcast: Broadcast, tasks: Sequence[ClientTask], states: Sequence[State]) -> list[ClientResult]:
        """Local training of ``tasks`` (with their persistent ``states``), in order.

        Returns:
            One :class:`ClientResult` per task, in task order; states come back on the
            CPU (the client-state store keeps them there).
        """
        return self.run_one_by_one(algorithm, broadcast, tasks, states)
