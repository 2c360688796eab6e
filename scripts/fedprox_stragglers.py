"""FedProx's straggler study (Li et al., MLSys 2020, Figure 1) on Fashion-MNIST, in one command.

For each straggler level (0, 50, 90 % of each round's 10 clients run only U{1..20} of the 20
local epochs) it trains three methods on the same split, seed, client selection and
stragglers:

* FedAvg: ``fedavg`` with ``stragglers.policy=drop`` (the stragglers' work is lost);
* FedProx (mu=0): ``fedprox`` ``mu=0`` with ``policy=keep`` (partial work aggregated);
* FedProx (mu=1): ``fedprox`` ``mu=1`` with ``policy=keep``.

The experiment is experiments/FashionMNIST/powerlaw_k2_C1000 (1000 clients, power-law sizes,
2 classes each, logreg, lr 0.03, batch 10, 20 local epochs). As in the paper, the curve is
the training loss of the global model on all clients' training data, every ``--eval-every``
rounds. Writes into ``--out``: ``fedprox_stragglers.png`` (one panel per straggler level),
``fedprox_stragglers.csv`` (every point) and ``fedprox_stragglers.json`` (final losses and
whether FedProx mu=1 beats FedAvg at 90 % stragglers).

    .venv/bin/python scripts/fedprox_stragglers.py [--rounds 200] [--eval-every 5] [--out docs/results] [key.sub=value ...]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from fedtorch.experiment.atomic import write_text  # noqa: E402
from fedtorch.experiment.plots import save_figure  # noqa: E402
from fedtorch.experiment.config import apply_overrides, load_experiment, validate  # noqa: E402
from fedtorch.experiment.runner import prepare  # noqa: E402
from fedtorch.federation import ClientStateStore, run_sync  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "FashionMNIST" / "powerlaw_k2_C1000"
LEVELS = (0.0, 0.5, 0.9)
METHODS = {  # label -> overrides
    "FedAvg": ["algorithm.name=fedavg", "stragglers.policy=drop"],
    "FedProx (mu=0)": ["algorithm.name=fedprox", "algorithm.mu=0", "stragglers.policy=keep"],
    "FedProx (mu=1)": ["algorithm.name=fedprox", "algorithm.mu=1", "stragglers.policy=keep"],
}


def run_one(base, overrides: list[str], eval_every: int) -> tuple[list[tuple[int, float]], float, float]:
    """Train one configuration; returns ([(round, global training loss)], final test accuracy, seconds)."""
    cfg = validate(apply_overrides(base, [*overrides, f"eval.every={eval_every}"]))
    prep = prepare(cfg)
    data = prep.data.data
    server = prep.initial_server()
    curve = [(0, prep.executor.evaluate(server.x, data.train_x, data.train_y)[0])]

    def train_loss(x, buffers=None):  # the paper's curve: the global model on all training data
        return prep.executor.evaluate(x, data.train_x, data.train_y, buffers)

    def on_round(state, report):
        if report.test_loss is not None:
            curve.append((report.round, report.test_loss))

    start = time.perf_counter()
    final = run_sync(prep.algorithm, prep.executor, prep.data, server, ClientStateStore(), prep.settings, train_loss, on_round)
    seconds = time.perf_counter() - start
    return curve, prep.executor.evaluate(final.x, data.test_x, data.test_y)[1], seconds


def main() -> None:
    """Run the 3 x 3 grid (straggler levels x methods) and write the figure, CSV and JSON.

    Command line: ``--rounds`` (default 200), ``--eval-every`` (rounds between points of
    the training-loss curve, default 5), ``--out`` (folder, default docs/results, created
    if missing) and ``key.sub=value`` overrides applied to every run. Prints one line per
    run (final global training loss, test accuracy, seconds) and the verdict at 90 %
    stragglers. The outputs are written only after all nine runs, each atomically.

    Raises:
        ConfigError: an invalid override, or the Fashion-MNIST files are missing
            (``fedtorch.experiment.runner.prepare``); the traceback shows it, this being a script.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    ap.add_argument("overrides", nargs="*", help="overrides for every run, e.g. seed=1")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base, _ = load_experiment(EXPERIMENT)
    base = apply_overrides(base, [f"rounds={args.rounds}", "logging.progress=none", *args.overrides])
    rows, summary = [], {"rounds": args.rounds, "experiment": str(EXPERIMENT.relative_to(ROOT)), "final_train_loss": {},
                         "final_test_accuracy": {}, "seconds": {}}
    for level in LEVELS:
        for label, overrides in METHODS.items():
            curve, acc, seconds = run_one(base, [*overrides, f"stragglers.fraction={level}"], args.eval_every)
            key = f"{int(level * 100)}% {label}"
            summary["final_train_loss"][key] = curve[-1][1]
            summary["final_test_accuracy"][key] = acc
            summary["seconds"][key] = round(seconds, 1)
            rows += [{"stragglers": level, "method": label, "round": r, "train_loss": loss} for r, loss in curve]
            print(f"{key:24s} final training loss {curve[-1][1]:.4f}  test accuracy {acc:.4f}  ({seconds:.0f} s)", flush=True)
    fedavg, fedprox = summary["final_train_loss"]["90% FedAvg"], summary["final_train_loss"]["90% FedProx (mu=1)"]
    summary["fedprox_mu1_beats_fedavg_at_90"] = fedprox < fedavg
    args.out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()  # every output is written atomically: an interrupted script leaves no half file
    w = csv.DictWriter(buf, fieldnames=["stragglers", "method", "round", "train_loss"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(args.out / "fedprox_stragglers.csv", buf.getvalue())
    write_text(args.out / "fedprox_stragglers.json", json.dumps(summary, indent=2) + "\n")
    plot(rows, args.out / "fedprox_stragglers.png")
    verdict = "beats" if fedprox < fedavg else "does not beat"
    print(f"at 90 % stragglers FedProx (mu=1, keep) {verdict} FedAvg (drop) on final training loss: {fedprox:.4f} vs {fedavg:.4f}")
    print(f"wrote {args.out}/fedprox_stragglers.png, .csv, .json")


def plot(rows: list[dict], path: Path) -> None:
    """Training loss vs rounds, one panel per straggler level (the paper's Figure 1 layout)."""
    fig, axes = plt.subplots(1, len(LEVELS), figsize=(13, 3.8), dpi=110, sharey=True)
    styles = {"FedAvg": ("tab:red", "-"), "FedProx (mu=0)": ("tab:blue", "--"), "FedProx (mu=1)": ("tab:green", "-")}
    for ax, level in zip(axes, LEVELS):
        for label, (color, ls) in styles.items():
            pts = [(r["round"], r["train_loss"]) for r in rows if r["stragglers"] == level and r["method"] == label]
            ax.plot(*zip(*pts), color=color, ls=ls, label=label)
        ax.set_title(f"{int(level * 100)}% stragglers")
        ax.set_xlabel("# rounds")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training loss")
    axes[0].legend()
    fig.suptitle("Fashion-MNIST, 1000 clients (power law, 2 classes each), logreg, 20 local epochs, 10 clients per round")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
