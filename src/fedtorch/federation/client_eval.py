"""Per-client evaluation: accuracy of the global (and personalised) model on every
client's held-out local split, summarised as mean, std, worst-10 % and best-10 %.

Personalised accuracy is measured for algorithms whose ``personalization()`` says how
to fine-tune (Per-FedAvg: one SGD step of size alpha on the client's training data);
the fine-tuning runs through the executor like any local training, so it needs no
executor-specific code. Its minibatches come from the seed ``derive_seed(seed,
"personalization")`` (purpose ``"personalization"``), not from the training seed: a
fine-tuning at ``server.round`` = t would otherwise draw exactly the minibatches that client
trains on in round t (``generator(seed, t, i, "minibatch")``). The optional hooks
``eval_model`` and ``personalization`` go through
:class:`~fedtorch.federation.planning.Hooks` (defaults: ``server.x``, no personalisation).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from fedtorch.data.federated import FederatedData
from fedtorch.federation.model_buffers import ModelBuffers
from fedtorch.federation.planning import Hooks
from fedtorch.protocol import ClientTask, RoundContext, ServerState
from fedtorch.seeding import derive_seed

PURPOSE = "personalization"


def summarize(accuracies: torch.Tensor, prefix: str) -> dict[str, float]:
    """Mean, std (population), worst-10 % and best-10 % of per-client accuracies.

    Worst/best-10 % are the mean accuracy of the ceil(10 %) lowest / highest clients
    (the q-FFL paper's "worst 10 %").

    Args:
        accuracies: ``(N,)`` accuracies in [0, 1] (at least one).
        prefix: key prefix, e.g. ``"client_acc"``.

    Returns:
        ``{prefix_mean, prefix_std, prefix_worst10, prefix_best10}`` as floats.
    """
    a = accuracies.to(torch.float64).sort().values
    k = max(1, math.ceil(0.1 * len(a)))
    return {
        f"{prefix}_mean": a.mean().item(),
        f"{prefix}_std": a.std(unbiased=False).item(),
        f"{prefix}_worst10": a[:k].mean().item(),
        f"{prefix}_best10": a[-k:].mean().item(),
    }


def evaluate_clients(algorithm, executor, data: FederatedData, holdout: list[torch.Tensor], server: ServerState,
                     batch_size: int, seed: int,
                     buffers_of: Callable[[int], torch.Tensor | None] | None = None) -> dict[str, float]:
    """Per-client accuracy of the global model (and, if the algorithm personalises, of
    each client's personalised model) on the held-out splits.

    Args:
        algorithm: the run's algorithm (its ``eval_model`` and ``personalization``).
        executor: the run's executor (``run`` and ``evaluate``).
        data: the federated training data (client training indices).
        holdout: ``(h_i,)`` held-out indices per client; clients with none are skipped.
        server: the current server state.
        batch_size: B of the fine-tuning minibatches.
        seed: the training seed; the fine-tuning draws from ``derive_seed(seed, PURPOSE)``.
        buffers_of: client -> the ``(Q,)`` model buffers (BatchNorm statistics) to evaluate
            and fine-tune it with (``model.local_buffers``: its own); default the server's.

    Returns:
        :func:`summarize` of ``client_acc`` and, when personalised, ``personal_acc``.
    """
    hooks = Hooks(algorithm, "client_eval")
    x = hooks.eval_model(server)
    clients = [c for c, h in enumerate(holdout) if h.numel() > 0]
    train_x, train_y = data.data.train_x, data.data.train_y

    own = {c: (server.buffers if buffers_of is None else buffers_of(c)) for c in clients}

    def accuracy(c: int, model: torch.Tensor, buffers: torch.Tensor | None) -> float:
        return executor.evaluate(model, train_x[holdout[c]], train_y[holdout[c]], buffers)[1]

    out = summarize(torch.tensor([accuracy(c, x, own[c]) for c in clients]), "client_acc")
    plan = hooks.personalization()
    if plan is not None:
        tune_seed = derive_seed(seed, PURPOSE)
        tasks = [ClientTask(RoundContext(server.round, c, tune_seed, data.num_samples(c), plan.steps, plan.lr),
                            data.client_indices[c], own[c]) for c in clients]
        broadcast = ModelBuffers().broadcast(plan.algorithm.broadcast(server.replace(x=x)), server)
        results = executor.run(plan.algorithm, broadcast, tasks, [{} for _ in clients])
        personal = [accuracy(c, x - r.message.delta.to(x.device), r.buffers) for c, r in zip(clients, results)]
        out.update(summarize(torch.tensor(personal), "personal_acc"))
    return out
