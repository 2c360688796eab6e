"""Append-only log files of a run directory (``metrics.jsonl``, ``metrics.csv``,
``clients.csv``, ``updates.csv``): a row is appended, never rewritten, so logging a round
costs the same at round 10 and at round 10,000 (``benchmarks/log_cost.py``).

Durability: :meth:`LogFile.flush` hands the appended bytes to the operating system, so a
killed process (even SIGKILL) loses nothing flushed; :meth:`LogFile.sync` adds
``os.fsync`` (against a power cut) and is called before every checkpoint. A kill in the
middle of an append can leave a partial last line: :func:`read_jsonl` and
:meth:`CsvLog.keep_prefix` drop it when a run is resumed.

A file is rewritten whole only on resume (:meth:`CsvLog.keep_prefix` cuts it in place at
the checkpoint; the small metrics files are rewritten from memory) and in one rare case:
when a row brings a CSV column the header lacks (an algorithm whose messages gain a
scalar field mid-run), the file is rewritten once with the widened header, earlier rows
getting empty cells, exactly as rendering all rows at once would.

Every value in these CSV files is a number or empty, so a line is split at its commas
when scanned (a quoted line is parsed with :mod:`csv`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

from fedtorch.experiment.atomic import atomic_path, write_text
from fedtorch.experiment.errors import ConfigError


def csv_text(rows: Iterable[dict], fields: Sequence[str], header: bool = True) -> str:
    """CSV lines (``\\n``-terminated) of ``rows`` in column order ``fields``; a missing or
    None value is an empty cell, a float is written as ``repr`` (the :mod:`csv` rule)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(fields)
    for r in rows:
        w.writerow(["" if r.get(k) is None else r[k] for k in fields])
    return buf.getvalue()


def cut_partial_line(path: Path) -> None:
    """Truncate ``path`` just after its last newline (drop a partial last line left by a
    process killed mid-append); nothing if the file is missing or ends with a newline."""
    if not path.is_file():
        return
    size = path.stat().st_size
    with open(path, "rb") as f:
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            chunk = f.read(end - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                end = start + i + 1
                break
            end = start
    if end < size:
        os.truncate(path, end)


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file, after :func:`cut_partial_line`; [] if it is missing.

    Raises:
        ConfigError: a complete line is not JSON (the file is damaged; names the line).
    """
    cut_partial_line(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ConfigError(f"{path}: line {n} is not JSON; the run's metrics are damaged: "
                                      "remove that line, or start the run again") from None
    return rows


class LogFile:
    """One append-only file, opened on the first append and kept open.

    The first append truncates the file (a new recorder starts it afresh, as the old
    whole-file rewrite did) unless the file was taken over by :meth:`replace` or
    :meth:`CsvLog.keep_prefix`: then appends continue it.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fresh = True
        self._f = None

    def append(self, text: str) -> None:
        """Append ``text`` (buffered until :meth:`flush`).

        Raises:
            OSError: the file cannot be opened or written.
        """
        if self._f is None:
            self._f = open(self.path, "wb" if self.fresh else "ab")
            self.fresh = False
        self._f.write(text.encode("utf-8"))

    def replace(self, text: str) -> None:
        """Rewrite the whole file with ``text`` atomically; appends continue after it."""
        self.close()
        write_text(self.path, text)
        self.fresh = False

    def flush(self) -> None:
        """Hand the buffered bytes to the operating system (survives a killed process)."""
        if self._f is not None:
            self._f.flush()

    def sync(self) -> None:
        """:meth:`flush`, then ``os.fsync`` (survives a power cut)."""
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        """Flush and close the file handle (a later append reopens it)."""
        if self._f is not None:
            self._f.close()
            self._f = None


class CsvLog(LogFile):
    """An append-only CSV file whose header is ``header_of(keys)`` for the keys of every
    row appended so far (the header is written with the first row).

    Args:
        path: the file.
        header_of: ``set of row keys -> column list``; a fixed list for a file whose
            columns never change, else one that grows with the keys.
    """

    def __init__(self, path: Path, header_of: Callable[[set], list[str]]):
        super().__init__(path)
        self.header_of = header_of
        self.fields: list[str] | None = None
        self._keys: set[str] = set()

    def append_rows(self, rows: list[dict]) -> None:
        """Append ``rows`` (the header first if the file has none; a rewrite with a widened
        header first if a row brings a new column, see the module docstring).

        Raises:
            OSError: the file cannot be written.
        """
        new = [k for r in rows for k in r if k not in self._keys]
        if new or self.fields is None:
            self._keys.update(new)
            fields = self.header_of(self._keys)
            if self.fields is not None and fields != self.fields:
                self._widen(fields)
            elif self.fields is None:
                self.append(csv_text((), fields))
                self.fields = fields
        self.append(csv_text(rows, self.fields, header=False))

    def replace_rows(self, rows: list[dict]) -> None:
        """Rewrite the file atomically as exactly ``rows`` (empty, header-less, for none)."""
        self._keys = {k for r in rows for k in r}
        self.fields = self.header_of(self._keys) if rows else None
        self.replace(csv_text(rows, self.fields) if rows else "")

    def touch(self) -> None:
        """Make sure the file exists with its header (for a run that logged no row)."""
        if self.fields is None and (self.fresh or not self.path.is_file() or self.path.stat().st_size == 0):
            self.fields = self.header_of(self._keys)
            self.append(csv_text((), self.fields))

    def _widen(self, fields: list[str]) -> None:
        self.close()
        with atomic_path(self.path) as tmp, open(self.path, encoding="utf-8", newline="") as src, \
                open(tmp, "w", encoding="utf-8", newline="") as dst:
            reader = csv.reader(src)
            old = next(reader)
            index = [old.index(f) if f in old else None for f in fields]
            w = csv.writer(dst, lineterminator="\n")
            w.writerow(fields)
            for row in reader:
                w.writerow(["" if i is None else row[i] for i in index])
        self.fields = fields

    def keep_prefix(self, columns: Sequence[str], keep: Callable[[list[int]], bool],
                    visit: Callable[[list[int]], None] | None = None) -> None:
        """Cut the file in place before its first row for which ``keep`` is false (rows
        are appended in order, so what follows was written later), or before a partial
        last line; appends continue after it.

        Args:
            columns: integer columns whose values are passed to ``keep`` and ``visit``.
            keep: ``[values] -> bool``.
            visit: called with the values of every row kept, in file order.

        Raises:
            ConfigError: the header lacks one of ``columns`` or a kept row's value is not
                an integer (a damaged file; names it).
        """
        self.close()
        self.fresh, self.fields, self._keys = False, None, set()
        if not self.path.is_file():
            return
        with open(self.path, "rb") as f:
            header = f.readline()
            offset = 0
            if header.endswith(b"\n"):
                fields = next(csv.reader([header.decode("utf-8")]))
                missing = [c for c in columns if c not in fields]
                if missing:
                    raise ConfigError(f"{self.path}: no column {missing[0]!r} in its header; the run's logs are "
                                      "damaged: start the run again")
                index = [fields.index(c) for c in columns]
                offset = len(header)
                for n, line in enumerate(f, 2):
                    if not line.endswith(b"\n"):
                        break
                    cells = next(csv.reader([line.decode("utf-8")])) if b'"' in line else line.split(b",")
                    try:
                        values = [int(cells[i]) for i in index]
                    except (ValueError, IndexError):
                        raise ConfigError(f"{self.path}: line {n} is damaged (expected integers in columns "
                                          f"{list(columns)}); start the run again") from None
                    if not keep(values):
                        break
                    if visit is not None:
                        visit(values)
                    offset += len(line)
                self.fields, self._keys = fields, set(fields)
        if offset < self.path.stat().st_size:
            os.truncate(self.path, offset)
