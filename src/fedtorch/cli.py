"""The ``fedtorch`` command.

    fedtorch run <experiment-folder> [key.sub=value ...] [--multirun]
    fedtorch run --resume <run-dir>
    fedtorch --version
    fedtorch partition <experiment-folder> [key.sub=value ...] [--out DIR]
    fedtorch algorithms [experiment-folder]
    fedtorch compare <experiment-folder> --algorithms a,b,c [key.sub=value ...] [--target 0.7]
    fedtorch reproduce <table> [--cells a,b] [--methods x,y] [--seeds N] [--rounds R] [--smoke] [--out DIR] [--jobs J]

Bad input, a damaged or foreign run directory on ``--resume``, and a file that cannot be
created or written (read-only, in the way, disk full) print one ``error:`` line (key or
file, value, what to do) and exit with 2. ``run`` and ``run --resume`` are thin layers over
the Python API (:mod:`fedtorch.api`): the same validation, run directory and results.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from fedtorch.experiment.errors import ConfigError


def _run_epilog(width: int = 110) -> str:
    import textwrap

    from fedtorch.experiment.config_keys import flat_defaults, key_meanings

    lines = ["configuration keys (override with key.sub=value) with their defaults and meanings:"]
    meanings = key_meanings()  # the comments of fedtorch/experiment/schema.py
    entries = [(f"  {key} = {default!r}", meanings.get(key, "")) for key, default in flat_defaults()]
    column = min(max(len(left) for left, _ in entries) + 2, 46)
    for left, meaning in entries:
        first = left.ljust(column) if len(left) < column else left + "\n" + " " * column
        lines.append(textwrap.fill(meaning, width, initial_indent=first, subsequent_indent=" " * column,
                                   break_on_hyphens=False) if meaning else left)
    lines += [
        "  algorithm.<hparam>  the chosen algorithm's hyper-parameters (see `fedtorch algorithms`)",
        "",
        "examples:",
        "  fedtorch run experiments/FashionMNIST/A0d5C100",
        "  fedtorch run experiments/FashionMNIST/A0d5C100 algorithm.name=fedprox algorithm.mu=0.01 rounds=50 seed=3",
        "  fedtorch run experiments/FashionMNIST/A0d5C100 --multirun algorithm.name=fedprox algorithm.mu=0,0.01,1 seed=0,1,2",
        "  fedtorch run --resume runs/FashionMNIST/A0d5C100/fedavg_seed0_20260101-120000",
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    from fedtorch import __version__

    p = argparse.ArgumentParser(prog="fedtorch", description="Federated-learning simulation on PyTorch.")
    p.add_argument("--version", action="version", version=f"fedtorch {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="train an experiment", epilog=_run_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the experiment in a folder holding config.py; every run writes its own directory.",
    )
    run.add_argument("experiment", nargs="?", help="experiments/<DATASET>/<folder> holding config.py")
    run.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides (anywhere on the line)")
    run.add_argument("--multirun", action="store_true", help="sweep over comma-separated values (grid)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its checkpoint")
    part = sub.add_parser(
        "partition", help="write a report of an experiment's data split (CSV, heatmap, size histogram)",
        description="Split the data as `fedtorch run` would and report it: partition.csv (per client: samples, "
        "per-class counts), heatmap.png, sizes.png, summary.json, and a printed summary.",
    )
    part.add_argument("experiment", help="experiments/<DATASET>/<folder> holding config.py")
    part.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides, as for `fedtorch run`")
    part.add_argument("--out", help="report folder (default <output_dir>/<DATASET>/<folder>/partition)")
    alg = sub.add_parser("algorithms", help="list algorithms with their hyper-parameters and papers")
    alg.add_argument("experiment", nargs="?", help="also list the algorithm classes this experiment's config.py defines")
    cmp = sub.add_parser(
        "compare", help="run several algorithms with the same seed, split and schedule; write a table and a plot",
        description="Run each algorithm on the experiment with the same seed, data split and schedule, and write "
        "comparison.md, comparison.csv and accuracy.png. algorithm.<key>=v overrides go to the algorithms that take key.",
    )
    cmp.add_argument("experiment", help="experiments/<DATASET>/<folder> holding config.py")
    cmp.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides for every run")
    cmp.add_argument("--algorithms", required=True, help="comma-separated names, or all")
    cmp.add_argument("--target", type=float, default=0.7, help="test accuracy for the rounds-to-target column (default 0.7)")
    rep = sub.add_parser(
        "reproduce", help="run a published table's settings; report our numbers beside the published ones",
        description="Run every cell of a published table (each cell runs every method of the table) and write "
        "<table>.md, <table>.csv and <table>.png into --out: published number, ours (mean +- std over seeds), "
        "difference. Finished runs in --out are reused, so a table can be filled in several calls.",
    )
    rep.add_argument("table", help="table name (niid-bench-fmnist, fedprox-synthetic)")
    rep.add_argument("--cells", help="comma-separated cells (default: all)")
    rep.add_argument("--methods", help="comma-separated methods of the table (default: all)")
    rep.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per cell and method (default 1)")
    rep.add_argument("--rounds", type=int, help="rounds per run (default: the published number); the report labels a change")
    rep.add_argument("--smoke", action="store_true", help="CI check: one cell, 2 rounds, small data")
    rep.add_argument("--out", help="report folder; runs go to <out>/runs (default runs/reproduce/<table>)")
    rep.add_argument("--jobs", type=int, default=1, help="runs in parallel, one process each (default 1)")
    return p


def _cmd_compare(args) -> int:
    from fedtorch.experiment.compare import run_comparison
    from fedtorch.experiment.config import load_experiment

    base, folder = load_experiment(args.experiment)
    names = [n.strip() for n in args.algorithms.split(",") if n.strip()]
    out, rows = run_comparison(base, folder, names, args.overrides, args.target)
    print((out / "comparison.md").read_text(), end="")
    print(f"comparison in {out} (comparison.md, comparison.csv, accuracy.png, one run directory per algorithm)")
    return 1 if any(r["status"] == "crashed" for r in rows) else 0


def _cmd_reproduce(args) -> int:
    from fedtorch.reproduce import get_table
    from fedtorch.reproduce.report import write_report
    from fedtorch.reproduce.runner import plan, run_jobs

    table = get_table(args.table)
    if args.jobs < 1:
        raise ConfigError(f"--jobs={args.jobs} is not allowed: must be >= 1")
    setting, jobs = plan(table, args.cells, args.methods, args.seeds, args.rounds, args.smoke)
    out = Path(args.out) if args.out else Path("runs") / "reproduce" / table.name
    print(f"{table.title}: {len(jobs)} runs of {setting.rounds} rounds", flush=True)
    run_jobs(table, jobs, setting, out, args.jobs)
    flags = [f"--{k} {v}" for k, v in (("cells", args.cells), ("methods", args.methods), ("seeds", args.seeds),
                                        ("rounds", args.rounds), ("out", args.out), ("jobs", args.jobs)) if v is not None]
    command = " ".join(["fedtorch reproduce", table.name, *flags, *(["--smoke"] if args.smoke else [])])
    md, _ = write_report(table, out, setting, command)
    print(md.read_text(), end="")
    print(f"report in {out} ({md.stem}.md, .csv, .png; runs in {out / 'runs'})")
    return 0


def _cmd_run(args) -> int:
    from fedtorch import api
    from fedtorch.experiment.config import load_experiment
    from fedtorch.experiment.run_dirs import interrupted_hint, load_run_config
    from fedtorch.experiment.runner import RESULT_NAME
    from fedtorch.experiment.sweep import run_sweep

    if args.resume:
        if args.experiment or args.overrides or args.multirun:
            raise ConfigError("--resume takes only the run directory (its config.yaml is reused unchanged)")
        run_dir = Path(args.resume)
        cfg = load_run_config(run_dir)  # validated; checked against run.json (version, config.yaml's sha256)
        if api.is_complete(run_dir):
            print(f"{run_dir} is already complete ({RESULT_NAME} exists); nothing to resume")
            return 0
        if cfg.execution.mode == "distributed":  # every rank reads run_dir/config.yaml; rank 0 resumes
            from fedtorch.experiment import distributed_run

            return distributed_run.main(cfg, None, _report, resume_dir=run_dir)
        prep = api.prepare_resume(cfg, run_dir)  # resumability needs no data: checked before the data is loaded
        print(f"execution: {prep.executor.description}", flush=True)
        return _report(run_dir, api.finish(prep, run_dir, resume=True).result)
    if not args.experiment:
        raise ConfigError("fedtorch run needs an experiment folder (e.g. experiments/FashionMNIST/A0d5C100) or --resume RUN_DIR")
    if args.multirun:
        base, folder = load_experiment(args.experiment)
        sweep_dir = run_sweep(base, folder, args.overrides)
        print(f"sweep finished: {sweep_dir / 'summary.csv'}")
        return 0
    cfg, folder = api.configure(args.experiment, args.overrides, quiet=False)
    if cfg.execution.mode == "distributed":  # every torchrun process; rank 0 runs the loop (docs/distributed.md)
        from fedtorch.experiment import distributed_run

        return distributed_run.main(cfg, folder, _report)
    prep, run_dir = api.start(cfg, folder)
    print(f"run directory: {run_dir}\nexecution: {prep.executor.description}", flush=True)
    try:
        result = api.finish(prep, run_dir)
    except KeyboardInterrupt:
        print(f"\n{interrupted_hint(cfg, run_dir)}", file=sys.stderr)
        return 130
    return _report(run_dir, result.result)


def _report(run_dir: Path, result: dict) -> int:
    """Print the run's summary; returns the exit code (3 for a diverged run)."""
    if result.get("status") == "diverged":
        print(f"error: diverged at round {result['diverged_at']}: {result['reason']}; {result['hint']}; "
              f"metrics up to that round and the last good checkpoint in {run_dir}", file=sys.stderr)
        return 3
    acc = result["final_test_accuracy"]
    print(
        f"done: {result['rounds']} rounds, final test accuracy {acc:.4f}, "
        f"{result['seconds_per_round']:.2f} s/round\nresults in {run_dir} "
        "(config.yaml, metrics.csv/jsonl, clients.csv, accuracy.png, loss.png, checkpoint.pt/.prev.pt/.json, model.pt, result.json)"
    )
    if result.get("mode") == "async":
        clock = "wall-clock" if "wall_clock_seconds" in result else "simulated"
        seconds = result.get("wall_clock_seconds", result.get("simulated_seconds"))
        print(f"async: {result['updates']} client updates in {seconds:.1f} {clock} seconds; "
              "updates.csv (event log), selected.csv/png, async_progress.png")
    return 0


def _cmd_partition(args) -> int:
    from fedtorch.experiment.config import apply_overrides, load_experiment, validate
    from fedtorch.experiment.partition_report import format_summary, partition_counts, write_report
    from fedtorch.experiment.paths import experiment_output_dir

    base, folder = load_experiment(args.experiment)
    cfg = validate(apply_overrides(base, args.overrides))
    out = Path(args.out) if args.out else experiment_output_dir(cfg.output_dir, folder) / "partition"
    d = cfg.data
    summary = write_report(partition_counts(cfg), out, f"{d.dataset}, partition={d.partition}, {d.num_clients} clients")
    print(format_summary(summary))
    print(f"report in {out} (partition.csv, heatmap.png, sizes.png, summary.json)")
    return 0


def _cmd_algorithms(experiment: str | None = None) -> int:
    from omegaconf import OmegaConf

    from fedtorch.algorithms import available_algorithms, get_algorithm
    from fedtorch.algorithms.registry import is_builtin
    from fedtorch.experiment.config import load_experiment
    from fedtorch.experiment.run_settings import resolve_server
    from fedtorch.experiment.plugins import reference
    from fedtorch.experiment.schema import ServerConfig

    if experiment is not None:
        load_experiment(experiment)  # registers the algorithm classes of its config.py
    print("Hyper-parameters are set with algorithm.<name>=value, the server optimiser with server.<key>=value.\n")
    unset = OmegaConf.structured(ServerConfig)  # every server.* key null: the algorithm's defaults
    for name in available_algorithms():
        cls = get_algorithm(name)
        hp = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Hparams)) or "-"
        server = resolve_server(unset, cls)
        optimizer = server.pop("optimizer")
        server_text = ", ".join(f"{k}={v!r}" for k, v in server.items())
        aliases = f" (also: {', '.join(cls.aliases)})" if cls.aliases else ""
        source = "" if is_builtin(cls) else f"\n  plug-in: {reference(cls)}"
        print(f"{name}{aliases}\n  algorithm: {hp}\n  server: {optimizer} {server_text}\n"
              f"  client state: {cls.state_vectors} x P float32 per client\n  paper: {cls.paper}{source}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command not in ("run", "partition", "compare") or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "partition":
            return _cmd_partition(args)
        if args.command == "compare":
            return _cmd_compare(args)
        if args.command == "reproduce":
            return _cmd_reproduce(args)
        return _cmd_algorithms(args.experiment)
    except ConfigError as e:  # bad input, damaged or foreign run files (checkpoint.CheckpointError too)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the one translation of a failed create/write (output_dir, run files) into one line
        from fedtorch.experiment.run_files import os_error_message

        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
