"""Atomic, durable file writes: write a temporary file in the same directory, fsync it,
rename it over the target, fsync the directory.

A reader (or a resumed run) sees either the old file or the new one, never half of one,
and after the call returns the new file survives a crash of the process or the machine.

Permissions: the temporary file is created with ``os.open(tmp, O_CREAT | O_EXCL, 0o666)``,
so the kernel applies the process umask exactly as it does for ``open(path, "w")``
(umask 022 gives 0644, 077 gives 0600). No ``os.umask`` call is needed, so there is no
read-and-restore of the umask that could race with other threads.

Every byte goes through :func:`_write` (one place: tests simulate a full disk by patching
it), and an :class:`OSError` raised while writing carries the target's path in
``filename``, so :func:`fedtorch.experiment.run_files.os_error_message` can name the file
in the CLI's one ``error:`` line.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_TMP_SUFFIX = ".tmp"


def _write(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to the file descriptor ``fd`` (the only low-level write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def temp_name(path: Path) -> str:
    """A fresh ``.<name>.<random>.tmp`` name in ``path``'s directory (hidden, so globs of
    run files never see it)."""
    return f".{path.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}"


def remove_stale_temps(path: str | Path) -> None:
    """Delete ``.<name>.*.tmp`` files next to ``path``: what a killed writer left behind."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


def _create_temp(path: Path) -> tuple[int, Path]:
    while True:
        tmp = path.parent / temp_name(path)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        except OSError as e:
            raise _with_filename(e, path) from None


def _with_filename(e: OSError, path: Path) -> OSError:
    if e.filename is None:
        e.filename = str(path)
    return e


def fsync_dir(directory: str | Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(src: str | Path, dst: str | Path) -> None:
    """``os.replace(src, dst)`` (atomic on POSIX), then fsync of ``dst``'s directory."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


class HashingFile:
    """A write-only binary file object over ``fd`` that keeps the sha256 and the length of
    what was written (for :func:`torch.save` into an :func:`atomic_file`)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.sha256, self.bytes = hashlib.sha256(), 0

    def write(self, data) -> int:
        _write(self.fd, data)  # an OSError reaches the caller through torch.save unchanged
        self.sha256.update(data)
        n = memoryview(data).nbytes
        self.bytes += n
        return n

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True


@contextmanager
def atomic_file(path: str | Path, fsync: bool = True) -> Iterator[HashingFile]:
    """Yield a :class:`HashingFile`; on success its content replaces ``path`` atomically.

    Args:
        path: the target.
        fsync: fsync the file before the rename and the directory after it.

    Raises:
        OSError: creating, writing or renaming failed (``filename`` is ``path``); the
            temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    fd, tmp = _create_temp(path)
    with _moved_over(tmp, path, fsync):
        f = HashingFile(fd)
        try:
            yield f
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def _moved_over(tmp: Path, path: Path, fsync: bool) -> Iterator[None]:
    """Around the writing of ``tmp``: then rename it over ``path`` (and fsync the directory);
    on any error remove ``tmp``, leave ``path`` untouched and name ``path`` in an OSError."""
    try:
        yield
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _with_filename(e, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path (an empty file, created with the umask's permissions) for a
    writer that wants a path (``savefig``, ``torch.save``); on success it replaces ``path``
    atomically.

    Raises:
        OSError: as :func:`atomic_file`; ``path`` is left untouched.
    """
    path = Path(path)
    fd, tmp = _create_temp(path)
    os.close(fd)
    with _moved_over(tmp, path, fsync):
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> str:
    """Write ``data`` to ``path`` atomically; returns its sha256 (hex)."""
    with atomic_file(path, fsync) as f:
        f.write(data)
    return f.sha256.hexdigest()


def write_text(path: str | Path, text: str, fsync: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"), fsync)
