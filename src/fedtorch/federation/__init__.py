"""Federation loops: when client updates meet the server.

Synchronous rounds (:mod:`~fedtorch.federation.sync`) and the asynchronous loop
(:mod:`~fedtorch.federation.async_loop`) share one task planner and one adapter for the
algorithm's optional hooks (:mod:`~fedtorch.federation.planning`).
"""

from fedtorch.federation.client_states import ClientStateStore
from fedtorch.federation.planning import HookError, Hooks, LocalWork, plan_tasks
from fedtorch.federation.sampling import sample_clients
from fedtorch.federation.sync import RoundReport, SyncSettings, run_sync

__all__ = ["ClientStateStore", "sample_clients", "RoundReport", "SyncSettings", "run_sync",
           "HookError", "Hooks", "LocalWork", "plan_tasks"]
