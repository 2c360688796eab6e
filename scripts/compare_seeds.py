"""Merge several `fedtorch compare` outputs (one per training seed) into one table of
mean +- std per algorithm, and one plot of the mean test-accuracy curves.

    .venv/bin/python scripts/compare_seeds.py OUT_PREFIX COMPARE_DIR [COMPARE_DIR ...]

Each COMPARE_DIR holds `comparison.csv` and one run directory per algorithm (with
`metrics.jsonl`). Writes OUT_PREFIX.md (table), OUT_PREFIX.csv and OUT_PREFIX.png.
The std is the sample standard deviation over seeds (n - 1 in the denominator).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedtorch.experiment.atomic import write_text  # noqa: E402
from fedtorch.experiment.plots import save_figure  # noqa: E402

FIELDS = [("final_test_accuracy", "final acc"), ("best_test_accuracy", "best acc"), ("last5", "mean acc, last 5 rounds"),
          ("client_acc_mean", "client acc mean"), ("client_acc_worst10", "client acc worst-10%"),
          ("personal_acc_mean", "personalised acc"), ("seconds_per_round", "s/round")]


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def load(compare_dir: Path) -> dict[str, dict]:
    """algorithm -> row of one comparison (plus ``last5`` and the accuracy curve)."""
    rows = {}
    with open(compare_dir / "comparison.csv", newline="") as f:
        for row in csv.DictReader(f):
            metrics = [json.loads(line) for line in (compare_dir / row["run_dir"] / "metrics.jsonl").read_text().splitlines() if line]
            curve = [m["test_accuracy"] for m in metrics if m.get("test_accuracy") is not None]
            row = {k: (_number(v) if k not in ("algorithm", "status", "run_dir", "note") else v) for k, v in row.items()}
            row["last5"] = sum(curve[-5:]) / len(curve[-5:]) if curve else None
            row["curve"] = curve
            rows[row["algorithm"]] = row
    return rows


def summarize(runs: list[dict[str, dict]]) -> list[dict]:
    names = sorted(set().union(*runs))
    out = []
    for name in names:
        present = [r[name] for r in runs if name in r]
        row = {"algorithm": name, "seeds": len(present), "status": ",".join(sorted({r["status"] for r in present}))}
        for key, _ in FIELDS:
            values = [r[key] for r in present if r.get(key) is not None]
            row[key] = statistics.fmean(values) if values else None
            row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(row)
    return sorted(out, key=lambda r: -(r["last5"] or 0))


def markdown(rows: list[dict]) -> str:
    head = "| algorithm | seeds | status | " + " | ".join(label for _, label in FIELDS) + " |"
    lines = [head, "|" + "---|" * (3 + len(FIELDS))]
    for r in rows:
        cells = []
        for key, _ in FIELDS:
            m, s = r[key], r[key + "_std"]
            digits = 2 if key == "seconds_per_round" else 4
            cells.append("-" if m is None else (f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"))
        lines.append(f"| {r['algorithm']} | {r['seeds']} | {r['status']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    prefix, dirs = Path(argv[0]), [Path(d) for d in argv[1:]]
    runs = [load(d) for d in dirs]
    rows = summarize(runs)
    write_text(prefix.with_suffix(".md"), markdown(rows))
    buf = io.StringIO()
    keys = ["algorithm", "seeds", "status"] + [k for key, _ in FIELDS for k in (key, key + "_std")]
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(prefix.with_suffix(".csv"), buf.getvalue())
    fig, ax = plt.subplots(figsize=(10, 6))
    for r in rows:
        curves = [run[r["algorithm"]]["curve"] for run in runs if r["algorithm"] in run]
        length = min(len(c) for c in curves)
        mean = [statistics.fmean(c[i] for c in curves) for i in range(length)]
        ax.plot(range(1, length + 1), mean, label=r["algorithm"], lw=1.2)
    ax.set(xlabel="round", ylabel=f"test accuracy (mean of {len(runs)} seeds)")
    ax.legend(fontsize=7, ncol=3)
    save_figure(fig, prefix.with_suffix(".png"))
    print(markdown(rows), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
