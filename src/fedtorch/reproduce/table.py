"""A published table as plain data: the setting, its cells, its methods and the numbers.

A :class:`Table` names a base configuration (a plain dict merged onto
:class:`~fedtorch.experiment.schema.Config`), the cells (data splits, straggler levels, ...)
and the methods (algorithm and its options) as ``key.sub=value`` overrides, and the
published figure of every (cell, method) pair. One module per table defines ``TABLE``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Method:
    """One row of a table: ``key`` (used by ``--methods`` and in paths), a display
    ``label`` and the overrides that select the algorithm and its options."""

    key: str
    label: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A published table (or figure) to reproduce.

    Attributes:
        name: the ``fedtorch reproduce <name>`` argument.
        title: one line naming the paper and the table.
        source: where the published numbers come from.
        config: the base configuration (a plain ``CONFIG``-style dict).
        cells: cell name -> overrides (``--cells`` picks a subset); every cell runs every method.
        methods: the table's rows, in display order.
        published: ``(cell, method key) -> number`` in ``metric_unit`` (absent: no number published).
        metric: the ``result.json`` key compared (``final_test_accuracy``, ``final_test_loss``).
        metric_label: its name in the report.
        scale: report units per ``metric`` unit (100 for a fraction shown in percent).
        tolerance: allowed |ours - published| in report units, or None (no numbers to compare).
        curve: the ``metrics.jsonl`` key plotted per round (``test_accuracy``, ``test_loss``).
        eval_on: ``"test"``, or ``"train"``: the global model is evaluated on the union of the
            clients' training data instead of the test set (FedProx's training-loss curves), so
            ``test_*`` columns then hold training-set figures.
        smoke: overrides of ``--smoke`` (small data); it also runs 2 rounds of ``smoke_cell``.
        smoke_cell: the cell ``--smoke`` runs when ``--cells`` is not given.
        notes: paragraphs for the report: how the setting maps onto fedtorch, known differences.
        claim: ``claim(means) -> (holds, sentence)`` over ``{(cell, method key): mean metric}``
            (report units), a published qualitative claim checked in the report; or None.
    """

    name: str
    title: str
    source: str
    config: dict
    cells: dict[str, tuple[str, ...]]
    methods: tuple[Method, ...]
    published: dict[tuple[str, str], float]
    metric: str
    metric_label: str
    scale: float = 1.0
    tolerance: float | None = None
    curve: str = "test_accuracy"
    eval_on: str = "test"
    smoke: tuple[str, ...] = ()
    smoke_cell: str = ""
    notes: tuple[str, ...] = ()
    claim: Callable[[dict], tuple[bool, str]] | None = field(default=None, compare=False)

    def method(self, key: str) -> Method:
        """The method named ``key`` (KeyError if none)."""
        for m in self.methods:
            if m.key == key:
                return m
        raise KeyError(key)
