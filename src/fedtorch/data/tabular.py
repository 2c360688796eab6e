"""Tabular datasets: scikit-learn's bundled sets and LIBSVM-format files.

Features are z-scored with the training mean and std; labels are mapped to ``0..C-1``.
A set without its own test split gets a fixed stratified 20% hold-out
(:func:`~fedtorch.data.tensors.stratified_holdout`, independent of ``data.seed``).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedtorch.data.idx import DataFileError
from fedtorch.data.tensors import TensorDataset, labels_to_range, standardised, stratified_holdout

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

TEST_FRACTION = 0.2


def _tensor_dataset(name: str, x_train, y_train, x_test, y_test) -> TensorDataset:
    train_x, test_x = standardised(x_train, x_test)
    train_y, test_y, num_classes = labels_to_range(y_train, y_test)
    return TensorDataset(train_x, train_y, test_x, test_y, num_classes, name)


def _holdout_dataset(name: str, x: np.ndarray, y: np.ndarray) -> TensorDataset:
    train, test = stratified_holdout(y, TEST_FRACTION)
    return _tensor_dataset(name, x[train], y[train], x[test], y[test])


def load_sklearn(name: str) -> TensorDataset:
    """scikit-learn's bundled ``breast_cancer`` (569 x 30, 2 classes), ``wine`` (178 x 13,
    3 classes) or ``digits`` (1797 x 64, 10 classes); read from the package, no download.

    Returns:
        ``train_x (N, d)`` float32 standardised, with a stratified 20% test hold-out.

    Raises:
        DataFileError: scikit-learn is not installed (the message says how to install it).
    """
    try:
        from sklearn import datasets
    except ImportError:
        raise DataFileError(f"{name} comes with scikit-learn, which is not installed: pip install scikit-learn") from None
    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return _holdout_dataset(name, x.astype(np.float64), y)


_OPENERS = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}


def read_libsvm(path: str | Path) -> tuple[np.ndarray, csr_matrix]:
    """Read a LIBSVM/SVMlight file with scikit-learn's parser: one sample per line,
    ``label index:value ...`` with 1-based increasing indices; ``#`` starts a comment.
    ``.bz2``/``.gz``/``.xz`` are decompressed.

    Returns:
        ``(labels (n,) float64, features)``: a ``(n, d)`` float32 CSR matrix, ``d`` the
        largest index in the file.

    Raises:
        DataFileError: unreadable or truncated compressed file, a malformed line (named
            with its number), or no samples.
    """
    from sklearn.datasets import load_svmlight_file

    path = Path(path)
    opener = _OPENERS.get(path.suffix, open)
    try:
        with opener(path, "rb") as f:
            x, y = load_svmlight_file(f, dtype=np.float32, zero_based=False)
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise DataFileError(f"{path}: cannot read ({e}); the file is corrupt or truncated, download it again") from None
    except ValueError as e:  # scikit-learn does not say where: find the line
        raise DataFileError(_bad_line(path, opener) or f"{path}: not LIBSVM format ({e})") from None
    if not len(y):
        raise DataFileError(f"{path}: no samples (empty LIBSVM file)")
    return y, x


def _bad_line(path: Path, opener) -> str | None:
    """The error message for the first malformed line of ``path`` (None if none is found)."""
    with opener(path, "rt", encoding="ascii", errors="replace") as f:
        for number, line in enumerate(f, 1):
            tokens = line.split("#", 1)[0].split()
            if not tokens:
                continue
            try:
                float(tokens[0])
                pairs = [t.split(":") for t in tokens[1:] if not t.startswith("qid:")]
                idx = [int(i) for i, _ in pairs]
                [float(v) for _, v in pairs]
            except ValueError:
                return f"{path}: line {number} is not LIBSVM format (label index:value ...): {line.strip()[:60]!r}"
            if idx and (idx[0] < 1 or any(b <= a for a, b in zip(idx, idx[1:]))):
                return f"{path}: line {number}: feature indices must be >= 1 and increasing"
    return None


def _dense(x: csr_matrix, num_features: int) -> np.ndarray:
    """``(n, num_features)`` float32 array of a CSR matrix with at most that many columns."""
    x = x.copy()
    x.resize((x.shape[0], num_features))
    return x.toarray()


# name -> (training file, test file or None); ".bz2"/".gz"/".xz" variants are found too.
LIBSVM_FILES = {
    "adult": ("a9a", "a9a.t"),
    "covtype": ("covtype.libsvm.binary", None),
    "rcv1": ("rcv1_train.binary", None),
}


def _find_file(root: Path, stem: str) -> Path | None:
    for suffix in ("", *_OPENERS):
        if (root / (stem + suffix)).is_file():
            return root / (stem + suffix)
    return None


def load_libsvm(root: Path, name: str) -> TensorDataset:
    """A LIBSVM dataset from the LIBSVM datasets page (Chang & Lin): ``adult`` (a9a/a9a.t,
    Platt's Adult, 123 binary features), ``covtype`` (covtype.libsvm.binary, 54 features),
    ``rcv1`` (rcv1_train.binary: 20,242 samples x 47,236 features, about 3.8 GB as dense
    float32; the peak is about that, as features are read sparse and standardised in
    place), or ``libsvm``: any file, ``root`` being its path (test file ``<root>.t`` when
    present).

    Features are read sparse (scikit-learn's parser) and densified to float32 (``d`` =
    the largest index in either file).

    Returns:
        ``train_x (N, d)`` float32 standardised; a stratified 20% hold-out when there is no
        test file.

    Raises:
        DataFileError: missing file (the message says where to put it), or any
            :func:`read_libsvm` error.
    """
    if name == "libsvm":
        train_path, test_path = root, Path(f"{root}.t")
        if not train_path.is_file():
            raise DataFileError(f"libsvm: no file {root}; set data.root to the path of a LIBSVM-format training file")
        test_path = test_path if test_path.is_file() else None
    else:
        train_stem, test_stem = LIBSVM_FILES[name]
        train_path = _find_file(root, train_stem)
        test_path = _find_file(root, test_stem) if test_stem else None
        missing = [s for s, p in ((train_stem, train_path), (test_stem, test_path)) if s and p is None]
        if missing:
            raise DataFileError(
                f"{name}: no {' or '.join(missing)}[.bz2] in {root}. Download it from the LIBSVM datasets page "
                f"(www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets) into {root}, or set data.root to its folder"
            )
    y_train, x_train = read_libsvm(train_path)
    y_test, x_test = read_libsvm(test_path) if test_path else (None, None)
    d = max(x_train.shape[1], x_test.shape[1] if x_test is not None else 0)
    if x_test is None:  # hold-out split on the sparse rows: only the dense result is ever allocated
        train, test = stratified_holdout(y_train, TEST_FRACTION)
        return _tensor_dataset(name, _dense(x_train[train], d), y_train[train], _dense(x_train[test], d), y_train[test])
    return _tensor_dataset(name, _dense(x_train, d), y_train, _dense(x_test, d), y_test)
