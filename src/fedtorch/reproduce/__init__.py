"""``fedtorch reproduce <table>``: run a published table's settings and report our number
beside the published one for every cell (mean +- std over seeds), with a plot.

Tables are plain data (:class:`~fedtorch.reproduce.table.Table`), one module per table;
:mod:`~fedtorch.reproduce.runner` runs their cells through the experiment layer
(``prepare``/``execute``, one run directory per run) and :mod:`~fedtorch.reproduce.report`
writes Markdown, CSV and PNG.
"""

from __future__ import annotations

from fedtorch.experiment.errors import ConfigError
from fedtorch.reproduce.fedprox_synthetic import TABLE as FEDPROX_SYNTHETIC
from fedtorch.reproduce.niid_bench_fmnist import TABLE as NIID_BENCH_FMNIST
from fedtorch.reproduce.table import Method, Table

TABLES: dict[str, Table] = {t.name: t for t in (NIID_BENCH_FMNIST, FEDPROX_SYNTHETIC)}


def get_table(name: str) -> Table:
    """The table named ``name``.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    if name not in TABLES:
        raise ConfigError(f"reproduce: unknown table {name!r}; available: {', '.join(sorted(TABLES))}")
    return TABLES[name]


__all__ = ["TABLES", "Method", "Table", "get_table"]
