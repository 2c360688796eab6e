"""Which clients took part when: ``selected.csv`` and ``selected.png`` of a run directory.

Synchronous runs list the clients trained in each round; asynchronous runs the clients of
each dispatch wave whose updates arrived.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedtorch.experiment.atomic import write_text  # noqa: E402
from fedtorch.experiment.plots import save_figure  # noqa: E402


def write_selection(pairs: list[tuple[int, int]], run_dir: Path, unit: str = "round") -> tuple[Path, Path]:
    """Write ``selected.csv`` (``<unit>,count,clients``: ids space-separated, sorted) and
    ``selected.png`` (one dot per client and ``unit``) from ``(unit index, client id)`` pairs.

    Returns:
        The two paths.
    """
    run_dir = Path(run_dir)
    by_unit: dict[int, list[int]] = defaultdict(list)
    for index, client in pairs:
        by_unit[index].append(client)
    lines = [f"{unit},count,clients"]
    lines += [f"{i},{len(c)},{' '.join(map(str, sorted(c)))}" for i, c in sorted(by_unit.items())]
    csv_path = run_dir / "selected.csv"
    write_text(csv_path, "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if pairs:
        xs, ys = zip(*pairs)
        ax.scatter(xs, ys, s=4 if len(pairs) > 2000 else 10, marker="s", linewidths=0)
    ax.set_xlabel(unit)
    ax.set_ylabel("client id")
    ax.set_title(f"selected clients per {unit}")
    ax.grid(alpha=0.3)
    return csv_path, save_figure(fig, run_dir / "selected.png")
