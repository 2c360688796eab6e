"""Benchmark: fedtorch's serial executor vs a plain PyTorch loop on the main job.

Both run the same rounds of experiments/FashionMNIST/A0d5C100 (FedAvg, CNN, 100 clients,
Dirichlet 0.5, 10 clients per round, 2 local epochs, batch 32, lr 0.01, momentum 0.9) in
one process, alternating so that machine noise hits both. Evaluation is excluded from
both. Prints s/round of each, the ratio fedtorch / plain (target <= 1.10) and how far
the two final models are apart.

    .venv/bin/python benchmarks/main_job.py [--rounds 3] [--repeats 2] [--json]
"""

from __future__ import annotations

import dataclasses
import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_loop import plain_fedavg  # noqa: E402

from fedtorch.experiment.config import load_experiment, validate  # noqa: E402
from fedtorch.experiment.runner import prepare  # noqa: E402
from fedtorch.flat import ParamLayout  # noqa: E402
from fedtorch.federation import ClientStateStore, run_sync  # noqa: E402
from fedtorch.models import build_model  # noqa: E402

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "FashionMNIST" / "A0d5C100"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds per measurement")
    ap.add_argument("--repeats", type=int, default=2, help="alternating measurements of each")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    base, _ = load_experiment(EXPERIMENT)
    cfg = validate(base)
    prep = prepare(cfg)
    ds, c = prep.data.data, cfg.client
    plain_model = build_model(cfg.model.name, ds.input_shape, ds.num_classes)
    ParamLayout.of(plain_model).load(plain_model, prep.x0)  # x0 is in fedtorch's flat layout
    server, store = prep.initial_server(), ClientStateStore()

    plain_t, fed_t = [], []
    for r in range(args.repeats):
        start = r * args.rounds
        plain_t += plain_fedavg(
            plain_model, ds.train_x, ds.train_y, prep.data.client_indices, rounds=args.rounds, start_round=start,
            clients_per_round=prep.settings.clients_per_round, batch_size=c.batch_size,
            local_epochs=c.local_epochs, lr=c.lr, momentum=c.momentum, seed=cfg.seed,
        )
        settings = dataclasses.replace(prep.settings, rounds=start + args.rounds)
        server = run_sync(prep.algorithm, prep.executor, prep.data, server, store, settings,
                          on_round=lambda s, rep: fed_t.append(rep.seconds))
    plain_s, fed_s = statistics.median(plain_t), statistics.median(fed_t)
    diff = (server.x - ParamLayout.of(plain_model).flatten(plain_model)).abs().max().item()
    out = {
        "workload": "main job (FashionMNIST A0d5C100, CNN, 10 clients/round, 2 epochs)",
        "rounds_measured": len(fed_t),
        "plain_s_per_round": round(plain_s, 3),
        "fedtorch_serial_s_per_round": round(fed_s, 3),
        "ratio_fedtorch_over_plain": round(fed_s / plain_s, 3),
        "max_abs_model_difference": diff,
        "torch_threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:32s} {v}")


if __name__ == "__main__":
    main()
