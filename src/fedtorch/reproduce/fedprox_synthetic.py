"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020),
Figure 1, Synthetic(1, 1): training loss of the global model against rounds at 0, 50 and
90 % stragglers, for FedAvg (stragglers dropped), FedProx mu=0 and FedProx mu=1 (partial
work of stragglers aggregated).

Setting: experiments/Synthetic/alpha1_beta1_C30 (30 devices, multinomial logistic
regression, 10 devices per round, 20 local epochs, batch 10, lr 0.01, 200 rounds); the
straggler rule is ``stragglers.*`` (a straggler runs U{1..E} of the E epochs). The same three
methods as scripts/fedprox_stragglers.py (which runs them on Fashion-MNIST). The paper gives
curves, not numbers, so the table has no published figures; its claim, checked in the
report, is that at 90 % stragglers FedProx mu=1 with partial work ends at a lower training
loss than FedAvg dropping the stragglers.
"""

from fedtorch.reproduce.table import Method, Table

CONFIG = {
    "seed": 0,
    "rounds": 200,
    "data": {"dataset": "synthetic", "partition": "natural", "num_clients": 30,
             "synthetic_alpha": 1.0, "synthetic_beta": 1.0, "seed": 0},
    "model": {"name": "logreg"},
    "algorithm": {"name": "fedavg"},
    "client": {"local_epochs": 20, "batch_size": 10, "lr": 0.01},
    "federation": {"clients_per_round": 10},
    "eval": {"every": 1},
    "logging": {"progress": "none"},
}

CELLS = {"stragglers0": ("stragglers.fraction=0.0",),
         "stragglers50": ("stragglers.fraction=0.5",),
         "stragglers90": ("stragglers.fraction=0.9",)}

METHODS = (
    Method("fedavg", "FedAvg (drop stragglers)", ("algorithm.name=fedavg", "stragglers.policy=drop")),
    Method("fedprox0", "FedProx mu=0 (keep partial work)", ("algorithm.name=fedprox", "algorithm.mu=0", "stragglers.policy=keep")),
    Method("fedprox1", "FedProx mu=1 (keep partial work)", ("algorithm.name=fedprox", "algorithm.mu=1", "stragglers.policy=keep")),
)


def _claim(means: dict) -> tuple[bool, str]:
    """FedProx's Figure 1 claim at 90 % stragglers, on the final training loss."""
    prox, avg = means.get(("stragglers90", "fedprox1")), means.get(("stragglers90", "fedavg"))
    if prox is None or avg is None:
        return False, "not checked: the stragglers90 cell was not run for both FedAvg and FedProx mu=1"
    holds = prox < avg
    verb = "holds" if holds else "does NOT hold"
    return holds, (f"The claim {verb}: at 90 % stragglers FedProx mu=1 with partial work ends at training loss "
                   f"{prox:.4f}, FedAvg dropping the stragglers at {avg:.4f}.")


TABLE = Table(
    name="fedprox-synthetic",
    title="FedProx (Li et al., MLSys 2020), Figure 1: Synthetic(1,1), stragglers 0/50/90 %",
    source="Li et al., MLSys 2020, Figure 1 (curves only; no numbers published)",
    config=CONFIG,
    cells=CELLS,
    methods=METHODS,
    published={},
    metric="final_test_loss",
    metric_label="final training loss (global model, all training data)",
    curve="test_loss",
    eval_on="train",
    smoke=("client.local_epochs=2",),
    smoke_cell="stragglers90",
    notes=(
        "The curves are the global model's loss on the union of the clients' training data after every "
        "round (FedProx's Figure 1 plots training loss), so the runs evaluate on the training set.",
        "A straggler runs U{1..20} of the 20 local epochs (FedProx Sec. 5.2); FedAvg drops stragglers, "
        "FedProx aggregates their partial work.",
    ),
    claim=_claim,
)
