"""Accuracy and loss curves of a run (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedtorch.experiment.atomic import atomic_path  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as PNG atomically and close it; returns ``path``."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def plot_run(metrics: list[dict], run_dir: Path, title: str = "") -> list[Path]:
    """Write ``accuracy.png`` (test accuracy vs round) and ``loss.png`` (train and test
    loss vs round) into ``run_dir``; returns their paths."""
    run_dir = Path(run_dir)
    evals = [m for m in metrics if m.get("test_accuracy") is not None]
    paths = []
    for name, series in (
        ("accuracy", [("test accuracy", evals, "test_accuracy")]),
        ("loss", [("train loss", [m for m in metrics if m.get("train_loss") is not None], "train_loss"),
                  ("test loss", evals, "test_loss")]),
    ):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for label, rows, key in series:
            ax.plot([r["round"] for r in rows], [r[key] for r in rows], marker="." if len(rows) < 60 else None, label=label)
        ax.set_xlabel("round")
        ax.set_ylabel(name)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        paths.append(save_figure(fig, run_dir / f"{name}.png"))
    return paths
