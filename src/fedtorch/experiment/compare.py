"""``fedtorch compare``: several algorithms on one experiment, same seed, split and
schedule, summarised in one table (Markdown + CSV) and one accuracy-vs-round plot.

Every configuration is validated before the first run starts. A run whose model or
losses become NaN/Inf is reported as ``diverged``; a run whose final test accuracy is at
chance, at most 1/num_classes + :data:`CHANCE_MARGIN`, is reported as ``chance`` (it
trained to nothing: a collapsed or exploded model that still gives finite losses); a run
that raises is reported as ``crashed`` with its error, and the comparison goes on with
the next algorithm.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fedtorch.algorithms import available_algorithms, get_algorithm  # noqa: E402
from fedtorch.experiment.atomic import write_text  # noqa: E402
from fedtorch.experiment.plots import save_figure  # noqa: E402
from fedtorch.data.partition import PARTITIONERS  # noqa: E402
from fedtorch.experiment.config import apply_overrides, parse_override, validate  # noqa: E402
from fedtorch.experiment.run_settings import clients_per_round  # noqa: E402
from fedtorch.experiment.errors import ConfigError  # noqa: E402
from fedtorch.experiment.paths import experiment_output_dir, make_unique_dir, timestamp  # noqa: E402
from fedtorch.experiment.runner import execute, new_run_dir, prepare  # noqa: E402

CHANCE_MARGIN = 0.02  # absolute accuracy above 1/num_classes still counted as chance (10 classes: <= 0.12)

COLUMNS = ["algorithm", "status", "final_test_accuracy", "best_test_accuracy", "rounds_to_target", "seconds_per_round",
           "bytes_per_round", "client_acc_mean", "client_acc_worst10", "personal_acc_mean", "run_dir", "note"]


def plan(base: DictConfig, algorithms: list[str], overrides: list[str]) -> list[DictConfig]:
    """One validated config per algorithm: ``overrides`` applied, then ``algorithm.name``.

    An ``algorithm.<key>=v`` override goes to the algorithms whose hyper-parameters
    include ``key`` (the others ignore it).

    Raises:
        ConfigError: no algorithm named, an unknown one, an ``algorithm.<key>`` no listed
            algorithm takes, or any invalid value (before anything runs).
    """
    if not algorithms:
        raise ConfigError("--algorithms needs at least one name, e.g. --algorithms fedavg,scaffold (or all)")
    if algorithms == ["all"]:
        algorithms = available_algorithms()
    classes = []
    for name in algorithms:
        try:
            classes.append(get_algorithm(name))
        except KeyError:
            raise ConfigError(f"--algorithms: unknown algorithm {name!r}; available: {', '.join(available_algorithms())}") from None
    general = [o for o in overrides if not parse_override(o)[0].startswith("algorithm.")]
    specific = [o for o in overrides if parse_override(o)[0].startswith("algorithm.")]
    for text in specific:
        key = parse_override(text)[0].split(".", 1)[1]
        if key == "name":
            raise ConfigError("compare takes the algorithms from --algorithms, not algorithm.name")
        if not any(key in {f.name for f in dataclasses.fields(c.Hparams)} for c in classes):
            raise ConfigError(f"no algorithm in --algorithms takes algorithm.{key}")
    configs = []
    for cls in classes:
        own = [o for o in specific if parse_override(o)[0].split(".", 1)[1] in {f.name for f in dataclasses.fields(cls.Hparams)}]
        configs.append(validate(apply_overrides(base, [*general, f"algorithm.name={cls.name}", *own])))
    return configs


def summarize_run(name: str, run_dir: Path, target: float, num_classes: int | None = None) -> dict:
    """One table row from a finished (or failed) run directory.

    Args:
        name: the algorithm's name (first column).
        run_dir: the run directory; its ``metrics.jsonl`` and ``result.json`` are read
            when present (a run that crashed before writing them gives empty cells).
        target: test accuracy for ``rounds_to_target`` (first evaluated round reaching it).
        num_classes: the dataset's number of classes, for the chance check (None: no check).

    Returns:
        A dict with every key of :data:`COLUMNS` (status ``ok``; ``diverged`` when the
        run stopped as diverged (``result.json``, its reason in ``note``) or a train or
        test loss is missing or non-finite; else ``chance`` when the final test
        accuracy is <= 1/num_classes + :data:`CHANCE_MARGIN`) plus ``curve``: ``[(round,
        test accuracy)]`` of the evaluated rounds, for the plot. A majority-class
        predictor on an unbalanced test set can score above this threshold and is not caught.
    """
    row = {"algorithm": name, "run_dir": run_dir.name, "status": "ok", "note": ""}
    metrics_path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] if metrics_path.is_file() else []
    evals = [r for r in rows if r.get("test_accuracy") is not None]
    losses = [r.get("train_loss") for r in rows] + [r.get("test_loss") for r in evals]
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    if result.get("status") == "diverged":
        row.update(status="diverged", note=f"stopped at round {result['diverged_at']}: {result['reason']}")
    elif any(v is None or not math.isfinite(v) for v in losses):
        row["status"] = "diverged"
    reached = [r["round"] for r in evals if r["test_accuracy"] >= target]
    row.update({
        "final_test_accuracy": evals[-1]["test_accuracy"] if evals else None,
        "best_test_accuracy": max((r["test_accuracy"] for r in evals), default=None),
        "rounds_to_target": reached[0] if reached else None,
        "seconds_per_round": result.get("seconds_per_round"),
        "bytes_per_round": result.get("bytes_per_round"),
        **{k: result.get(k) for k in ("client_acc_mean", "client_acc_worst10", "personal_acc_mean")},
        "curve": [(r["round"], r["test_accuracy"]) for r in evals],
    })
    final = row["final_test_accuracy"]
    if row["status"] == "ok" and num_classes and final is not None and final <= 1 / num_classes + CHANCE_MARGIN:
        row["status"] = "chance"
        row["note"] = f"final accuracy {final:.4f} <= chance 1/{num_classes} + {CHANCE_MARGIN}"
    return row


def _failure(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def run_comparison(base: DictConfig, experiment: Path, algorithms: list[str], overrides: list[str], target: float = 0.7) -> tuple[Path, list[dict]]:
    """Run every algorithm in turn; returns (comparison directory, table rows).

    The directory ``<output_dir>/<DATASET>/<folder>/compare_<time>/`` holds one run
    directory per algorithm and ``comparison.md``, ``comparison.csv``, ``accuracy.png``
    (rewritten after every run, so a stopped comparison keeps its finished rows).
    The first algorithm's run is prepared (data loaded and split) before any directory
    is made, so missing data leaves nothing behind.

    Raises:
        ConfigError: any invalid configuration (see :func:`plan`) or input error of
            :func:`~fedtorch.experiment.runner.prepare` (missing data files, impossible
            split, ...); an algorithm that fails otherwise is reported as ``crashed``.
        KeyboardInterrupt: passed on (the finished rows are already written).
    """
    configs = plan(base, algorithms, overrides)
    try:
        first = prepare(configs[0])  # input errors stop here, before a directory exists
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - prepared again below and reported as that algorithm's crash
        first = None
    out = make_unique_dir(experiment_output_dir(configs[0].output_dir, experiment), f"compare_{timestamp()}")
    rows = []
    for i, cfg in enumerate(configs):
        name = cfg.algorithm.name
        print(f"[{i + 1}/{len(configs)}] {name}", flush=True)
        prep, first, error, classes = first, None, None, None
        try:
            if prep is None:
                prep = prepare(cfg)
            classes = prep.data.data.num_classes
        except (KeyboardInterrupt, ConfigError):
            raise
        except Exception as e:  # one algorithm's failure must not stop the comparison
            error = _failure(e)
        run_dir = new_run_dir(cfg, experiment, parent=out, name=f"{i:02d}_{name}")
        if error is None:
            try:
                execute(prep, run_dir)
            except (KeyboardInterrupt, ConfigError):
                raise
            except Exception as e:  # one algorithm's failure must not stop the comparison
                error = _failure(e)
        prep = None  # free this algorithm's data before the next one loads its own
        row = summarize_run(name, run_dir, target, classes)
        if error is not None:
            row.update(status="crashed", note=error)
        rows.append(row)
        write_report(out, rows, cfg, target)
    return out, rows


def _fmt(value, kind: str) -> str:
    if value is None:
        return "-"
    return {"acc": f"{value:.4f}", "int": str(value), "s": f"{value:.3g}", "mb": f"{value / 1e6:.1f}"}[kind]


def _setup_line(cfg: DictConfig) -> str:
    """The table's first line: dataset, split (with the partitioner's own ``data.*``
    settings, e.g. alpha only for Dirichlet-type splits), clients, schedule."""
    d = cfg.data
    spec = PARTITIONERS.get(d.partition)
    keys = [k for k in (spec.options + spec.transform_options if spec else ()) if k != "min_samples" and d.get(k) is not None]
    split = d.partition + (" " + ", ".join(f"{k} {d[k]}" for k in keys) if keys else "")
    return (
        f"Dataset {d.dataset}, {split}, {d.num_clients} clients, {clients_per_round(cfg)} per round, "
        f"model {cfg.model.name}, {cfg.rounds} rounds, {cfg.client.local_epochs} local epoch(s), "
        f"batch {cfg.client.batch_size}, lr {cfg.client.lr}, seed {cfg.seed}."
    )


def write_report(out: Path, rows: list[dict], cfg: DictConfig, target: float) -> None:
    """Write comparison.md, comparison.csv and accuracy.png into ``out`` (each atomically).

    Args:
        out: the comparison directory (exists).
        rows: :func:`summarize_run` rows, in run order; ``note`` holds a crash's error.
        cfg: a config of the comparison, for the setup line above the table (dataset,
            split, clients per round, schedule are the same for every algorithm).
        target: the accuracy of the ``rounds to`` column header.
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS} for r in rows)
    write_text(out / "comparison.csv", buf.getvalue())
    client = any(r.get("client_acc_mean") is not None for r in rows)
    head = ["algorithm", "status", "final acc", "best acc", f"rounds to {target:g}", "s/round", "MB/round"]
    head += ["client acc mean", "client acc worst-10%", "personalised acc"] if client else []
    lines = [
        _setup_line(cfg),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [r["algorithm"], r["status"] + (f" ({r['note']})" if r["note"] else ""), _fmt(r["final_test_accuracy"], "acc"),
                 _fmt(r["best_test_accuracy"], "acc"), _fmt(r["rounds_to_target"], "int"), _fmt(r["seconds_per_round"], "s"),
                 _fmt(r["bytes_per_round"], "mb")]
        if client:
            cells += [_fmt(r.get("client_acc_mean"), "acc"), _fmt(r.get("client_acc_worst10"), "acc"), _fmt(r.get("personal_acc_mean"), "acc")]
        lines.append("| " + " | ".join(cells) + " |")
    write_text(out / "comparison.md", "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=100)
    cmap = plt.get_cmap("tab20")
    for i, r in enumerate(rows):
        if r["curve"]:
            xs, ys = zip(*r["curve"])
            ax.plot(xs, ys, color=cmap(i % 20), linestyle=("-", "--", ":")[i // 20 % 3], marker=".", label=f"{r['algorithm']} ({r['status']})" if r["status"] != "ok" else r["algorithm"])
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    save_figure(fig, out / "accuracy.png")
