"""The report of a table: ``<name>.md``, ``<name>.csv`` and ``<name>.png`` in ``--out``.

Every (cell, method) of the table gets a row: the published number, ours (mean +- sample
std over the finished seeds of the setting), the difference and whether it is within the
table's tolerance, and the mean training wall time per run. Runs are read back from their
run directories (``result.json``, ``metrics.jsonl``), so the report covers every finished
run of the setting, whichever call ran it.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedtorch.experiment.atomic import write_text  # noqa: E402
from fedtorch.experiment.plots import save_figure  # noqa: E402
from fedtorch.experiment.runner import RESULT_NAME  # noqa: E402
from fedtorch.experiment.sweep import summary_csv  # noqa: E402
from fedtorch.reproduce.runner import Job, Setting, run_dir_of  # noqa: E402
from fedtorch.reproduce.table import Table  # noqa: E402

CSV_FIELDS = ["cell", "method", "published", "ours_mean", "ours_std", "seeds", "difference", "within_tolerance",
              "wall_seconds_per_run", "rounds", "values"]


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def collect(table: Table, out: Path, setting: Setting) -> tuple[list[dict], dict]:
    """One row per (cell, method) with the finished seeds' numbers, and the seed-mean
    curves ``{(cell, method): [(round, value)]}`` of ``table.curve``."""
    rows, curves = [], {}
    for cell in table.cells:
        for m in table.methods:
            values, walls, per_seed = [], [], []
            for seed in range(setting.seeds):
                run_dir = run_dir_of(out, setting, Job(cell, m.key, seed))
                if not (run_dir / RESULT_NAME).is_file():
                    continue
                result = json.loads((run_dir / RESULT_NAME).read_text())
                v = result.get(table.metric)
                values.append(math.nan if v is None else v * table.scale)
                walls.append(result["seconds_per_round"] * result["rounds"])
                per_seed.append({r["round"]: r[table.curve] * table.scale for r in _metrics(run_dir) if r.get(table.curve) is not None})
            if per_seed:
                common = sorted(set.intersection(*(set(c) for c in per_seed)))
                curves[(cell, m.key)] = [(r, statistics.fmean(c[r] for c in per_seed)) for r in common]
            published = table.published.get((cell, m.key))
            mean = statistics.fmean(values) if values else None
            std = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
            diff = None if mean is None or published is None else mean - published
            rows.append({
                "cell": cell, "method": m.key, "label": m.label, "published": published, "ours_mean": mean, "ours_std": std,
                "seeds": len(values), "difference": diff,
                "within_tolerance": None if diff is None or table.tolerance is None else abs(diff) <= table.tolerance,
                "wall_seconds_per_run": statistics.fmean(walls) if walls else None, "rounds": setting.rounds,
                "values": " ".join(f"{v:.4g}" for v in values),
            })
    return rows, curves


def _fmt(v, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def markdown(table: Table, rows: list[dict], setting: Setting, command: str) -> str:
    """The Markdown report."""
    full = table.config["rounds"]
    digits = 1 if table.scale == 100 else 4
    lines = [f"# {table.title}", "", f"Published numbers: {table.source}.", "",
             f"Command: `{command}`", ""]
    if setting.smoke:
        lines += [f"**Smoke setting** (CI): {setting.rounds} rounds on small data ({', '.join(table.smoke)}); "
                  "the numbers are not comparable with the published ones.", ""]
    elif setting.rounds != full:
        lines += [f"**Reduced setting: {setting.rounds} of the published {full} rounds** (everything else as "
                  "published); our numbers are after round "
                  f"{setting.rounds} and are not expected to match the published final figures.", ""]
    lines += [f"Metric: {table.metric_label}; ours is the mean ± sample std over the seeds that finished "
              f"(of {setting.seeds} requested).", ""]
    tol = f"within ±{table.tolerance}" if table.tolerance is not None else "within tolerance"
    lines += [f"| cell | method | published | ours | seeds | ours − published | {tol} | wall s / run |",
              "| --- | --- | ---: | ---: | ---: | ---: | :---: | ---: |"]
    for r in rows:
        ours = "not run" if r["ours_mean"] is None else f"{r['ours_mean']:.{digits}f} ± {r['ours_std']:.{digits}f}"
        ok = {True: "yes", False: "**no**", None: "—"}[r["within_tolerance"]]
        lines.append(f"| {r['cell']} | {r['label']} | {_fmt(r['published'], 1)} | {ours} | {r['seeds']} | "
                     f"{_fmt(r['difference'], digits)} | {ok} | {_fmt(r['wall_seconds_per_run'], 0)} |")
    if table.claim is not None:
        means = {(r["cell"], r["method"]): r["ours_mean"] for r in rows if r["ours_mean"] is not None}
        _, sentence = table.claim(means)
        lines += ["", "## Claim", "", sentence]
    lines += ["", "## Setting and differences", ""] + [f"- {n}" for n in table.notes]
    lines += ["", f"![curves]({_slug(table)}.png)", ""]
    return "\n".join(lines)


def _slug(table: Table) -> str:
    return table.name.replace("-", "_")


def plot(table: Table, curves: dict, path: Path) -> Path:
    """One panel per cell: the seed-mean ``table.curve`` per method against rounds, and the
    published final value as a dotted line in the method's colour."""
    cells = list(table.cells)
    fig, axes = plt.subplots(1, len(cells), figsize=(4.5 * len(cells), 3.8), dpi=110, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, cell in zip(axes[0], cells):
        for i, m in enumerate(table.methods):
            color = colors[i % len(colors)]
            pts = curves.get((cell, m.key))
            if pts:
                ax.plot(*zip(*pts), color=color, label=m.label, marker="." if len(pts) < 30 else None)
            if (cell, m.key) in table.published:
                ax.axhline(table.published[(cell, m.key)], color=color, ls=":", lw=1)
        ax.set_title(cell)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    name = table.curve.replace("test_", "training " if table.eval_on == "train" else "test ")
    axes[0][0].set_ylabel(name + (" (%)" if table.scale == 100 else ""))
    with_lines = [ax for ax in axes[0] if ax.get_lines() and any(not l.get_label().startswith("_") for l in ax.get_lines())]
    if with_lines:
        with_lines[0].legend(fontsize=8)
    fig.suptitle(table.title + ("  (dotted: published)" if table.published else ""), fontsize=9)
    return save_figure(fig, path)


def write_report(table: Table, out: Path, setting: Setting, command: str) -> tuple[Path, list[dict]]:
    """Write ``<out>/<name>.md``, ``.csv`` and ``.png``; returns (the Markdown path, the rows)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, curves = collect(table, out, setting)
    slug = _slug(table)
    write_text(out / f"{slug}.csv", summary_csv([{k: r[k] for k in CSV_FIELDS} for r in rows]))
    plot(table, curves, out / f"{slug}.png")
    md = out / f"{slug}.md"
    write_text(md, markdown(table, rows, setting, command))
    return md, rows
