"""``fedtorch partition``: what an experiment's split looks like, before training on it.

Writes into one folder (atomically, file by file):

- ``partition.csv``: one row per client: ``client, samples, class_0 .. class_{C-1}``;
- ``heatmap.png``: clients x classes sample counts;
- ``sizes.png``: histogram of client sizes;
- ``summary.json``: the numbers of :class:`~fedtorch.data.stats.PartitionSummary`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fedtorch.data import DataFileError, PartitionError, load_split  # noqa: E402
from fedtorch.data.stats import PartitionSummary, label_counts, summarize  # noqa: E402
from fedtorch.experiment.atomic import write_text  # noqa: E402
from fedtorch.experiment.plots import save_figure  # noqa: E402
from fedtorch.experiment.errors import ConfigError  # noqa: E402


def partition_counts(cfg: DictConfig) -> np.ndarray:
    """Load and split the data exactly as ``fedtorch run`` would.

    Returns:
        ``(num_clients, num_classes)`` int64 label counts.

    Raises:
        ConfigError: missing or corrupt data, or an impossible split.
    """
    try:
        ds, parts = load_split(cfg.data)
    except (DataFileError, PartitionError) as e:
        raise ConfigError(str(e)) from None
    return label_counts(ds.train_y.numpy(), parts, ds.num_classes)


def write_report(counts: np.ndarray, out_dir: Path, title: str) -> PartitionSummary:
    """Write ``partition.csv``, ``heatmap.png``, ``sizes.png`` and ``summary.json``.

    Args:
        counts: ``(num_clients, num_classes)`` label counts.
        out_dir: the folder (created if needed).
        title: figure title.

    Returns:
        The summary that ``summary.json`` holds.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = counts.sum(axis=1)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["client", "samples", *(f"class_{k}" for k in range(counts.shape[1]))])
    for i, row in enumerate(counts):
        writer.writerow([i, int(sizes[i]), *row.tolist()])
    write_text(out_dir / "partition.csv", table.getvalue())

    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    norm = PowerNorm(0.5, vmin=0, vmax=max(int(counts.max()), 1))  # sqrt scale: heavy-tailed counts stay visible
    image = ax.imshow(counts, aspect="auto", interpolation="nearest", cmap="viridis", norm=norm)
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_title(f"samples per client and class\n{title}", fontsize=10)
    fig.colorbar(image, ax=ax, label="samples (square-root scale)")
    save_figure(fig, out_dir / "heatmap.png")

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.hist(sizes, bins=min(50, max(10, len(sizes) // 5)), color="tab:blue", edgecolor="white")
    ax.set_xlabel("samples per client")
    ax.set_ylabel("clients")
    ax.set_title(f"client sizes\n{title}", fontsize=10)
    save_figure(fig, out_dir / "sizes.png")

    summary = summarize(counts)
    write_text(out_dir / "summary.json", json.dumps(dataclasses.asdict(summary), indent=2) + "\n")
    return summary


def format_summary(s: PartitionSummary) -> str:
    """The printed summary: sizes, classes per client, mean JS distance to the global labels."""
    return (
        f"{s.num_clients} clients, {s.assigned} samples assigned\n"
        f"samples per client: mean {s.mean_samples:.1f}, std {s.std_samples:.1f}, min {s.min_samples}, max {s.max_samples}\n"
        f"classes per client: mean {s.mean_classes:.2f}\n"
        f"mean Jensen-Shannon distance to the global label distribution: {s.mean_js:.4f}"
    )
