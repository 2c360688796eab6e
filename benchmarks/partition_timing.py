"""Wall-clock timings of partitioners on hard requests (moved here from the test suite,
where a timing assertion fails on a slow or busy machine and proves nothing on a fast one).

    .venv/bin/python benchmarks/partition_timing.py

prints the median seconds of: quantity skew at beta = 1e-3 with 100 clients (NIID-Bench's
redraw loop never ends there; fedtorch's split must be immediate), and of the impossible
requests that must be refused before any work (label_quantity, power_law, quantity_dirichlet).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from fedtorch.data import PartitionError
from fedtorch.data.partition import label_quantity, power_law, quantity_dirichlet

TARGETS = np.random.default_rng(0).integers(0, 10, size=5000)
SKEWED = np.repeat(np.arange(10), [900, 800, 700, 600, 500, 500, 400, 300, 200, 100])


def seconds(call, repeats: int = 5) -> float:
    """Median wall seconds of ``call()`` (a PartitionError counts as done)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            call()
        except PartitionError:
            pass
        times.append(time.perf_counter() - start)
    return statistics.median(times)


CASES = {
    "quantity_dirichlet beta=1e-3, 100 clients, min 50": lambda: quantity_dirichlet(TARGETS, 100, 0, beta=1e-3, min_samples=50),
    "quantity_dirichlet min_samples too large (refused)": lambda: quantity_dirichlet(TARGETS, 100, 0, beta=0.5, min_samples=51),
    "label_quantity 1000 clients on 900 samples (refused)": lambda: label_quantity(SKEWED, 1000, 0, classes_per_client=10),
    "power_law 500 clients, min 10 (refused)": lambda: power_law(SKEWED, 500, 0, min_samples=10),
}


def main() -> None:
    for name, call in CASES.items():
        print(f"{seconds(call):9.4f} s  {name}")


if __name__ == "__main__":
    main()
