"""Run this experiment folder through the Python API, one algorithm after another.

    python experiments/CIFAR100/A0d01C100/run.py [key=value ...] [--algorithms fedavg,scaffold]

``COMMANDS`` lists the runs in order (the seed framework's ``commands`` list): an algorithm
and the overrides that run alone needs; the command line's ``key=value`` overrides apply to
every run (``rounds=5``, ``execution.device=cuda``, ``data.root=/data/cifar100``, ...).
``--algorithms`` keeps only the named entries. Each run gets its own run directory under
``runs/CIFAR100/A0d01C100/``; a table of final accuracies is printed at the end. A bad key
or missing data stops with the ``error:`` line and exit status 2, as ``fedtorch run`` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import fedtorch

HERE = Path(__file__).resolve().parent

COMMANDS = [  # (algorithm.name, its own overrides), run in this order
    ("fedavg", {}),
    ("fedprox", {"algorithm.mu": 0.01}),
    ("scaffold", {}),
    ("feddyn", {}),
    ("fedavgm", {}),
]


def parse(argv: list[str]) -> tuple[dict, list[str] | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    parser.add_argument("--algorithms", help="comma-separated subset of COMMANDS to run")
    args = parser.parse_args(argv)
    overrides = {}
    for text in args.overrides:
        key, sep, value = text.partition("=")
        if not sep:
            parser.error(f"override {text!r} is not key=value")
        overrides[key] = value
    return overrides, None if args.algorithms is None else args.algorithms.split(",")


def main(argv: list[str]) -> int:
    overrides, chosen = parse(argv)
    known = [name for name, _ in COMMANDS]
    if chosen is not None and not set(chosen) <= set(known):
        print(f"error: --algorithms {','.join(chosen)}: not in COMMANDS ({', '.join(known)})", file=sys.stderr)
        return 2
    finals = []
    for name, own in COMMANDS:
        if chosen is not None and name not in chosen:
            continue
        try:
            result = fedtorch.run(HERE, **{**own, **overrides, "algorithm.name": name})
        except fedtorch.ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        finals.append((name, result.result.get("final_test_accuracy"), result.run_dir))
    for name, accuracy, run_dir in finals:
        print(f"{name:10s} final test accuracy {accuracy}  {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
