"""Datasets as tensors, chosen by name (``data.dataset``).

Every loader returns a :class:`~fedtorch.data.tensors.TensorDataset` with train and test
tensors in memory (no per-sample ``Dataset`` objects). :data:`DATASETS` maps each name to
its loader; loaders live in :mod:`~fedtorch.data.leaf`, :mod:`~fedtorch.data.synthetic`,
:mod:`~fedtorch.data.tabular`, :mod:`~fedtorch.data.cifar` and :mod:`~fedtorch.data.huggingface`;
the MNIST-format (IDX) loader is here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from fedtorch.data.cifar import CIFAR, load_cifar
from fedtorch.data.huggingface import load_huggingface
from fedtorch.data.idx import DataFileError, read_idx
from fedtorch.data.leaf import load_femnist, load_shakespeare
from fedtorch.data.synthetic import fcube, synthetic
from fedtorch.data.tabular import LIBSVM_FILES, load_libsvm, load_sklearn
from fedtorch.data.tensors import DATA_DIR_ENV, TensorDataset, dataset_root

__all__ = ["DATASETS", "DatasetSpec", "TensorDataset", "load_dataset", "load_idx_dataset", "resolve_root"]

DEFAULT_IDX_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
# where each IDX dataset is looked for when neither data.root nor $FEDTORCH_DATA_DIR is set
IDX_DEFAULT_ROOTS = {"fashion_mnist": DEFAULT_IDX_ROOT, "mnist": "data/mnist"}

_IDX_NAMES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
_EMNIST_NAMES = {  # EMNIST calls the test split "test", not "t10k"
    "train_images": ("train-images-idx3-ubyte",), "train_labels": ("train-labels-idx1-ubyte",),
    "test_images": ("test-images-idx3-ubyte",), "test_labels": ("test-labels-idx1-ubyte",),
}


def resolve_root(root: str | None, name: str = "fashion_mnist") -> Path:
    """The folder of the IDX dataset ``name`` (``fashion_mnist`` or ``mnist``).

    In order: ``root`` (``data.root``) if given; else, when ``$FEDTORCH_DATA_DIR`` is set,
    its subfolder ``<name>/`` if that exists (the rule of every dataset), otherwise
    ``$FEDTORCH_DATA_DIR`` itself as the folder of the IDX files; else the dataset's own
    default (:data:`IDX_DEFAULT_ROOTS`: Fashion-MNIST the Debian path, MNIST
    ``./data/mnist``). MNIST never falls back to the Fashion-MNIST folder.
    """
    if root:
        return Path(root)
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        own = Path(env) / name
        return own if own.is_dir() else Path(env)
    return Path(IDX_DEFAULT_ROOTS[name])


def _find(root: Path, stems: tuple[str, ...]) -> Path:
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (root / name).is_file():
                return root / name
    raise FileNotFoundError(stems[0])


def load_idx_dataset(
    root: Path, name: str, mean: float, std: float, prefix: str = "", transpose: bool = False, label_offset: int = 0
) -> TensorDataset:
    """Load an MNIST-format directory (4 IDX files, raw or ``.gz``).

    Pixels are scaled to [0, 1] then normalised with ``(p - mean) / std``.

    Args:
        prefix: file-name prefix, e.g. ``"emnist-letters-"`` (EMNIST names its test
            files ``*-test-*``, MNIST ``t10k-*``).
        transpose: swap image rows and columns (EMNIST stores images transposed).
        label_offset: subtracted from every label (EMNIST letters are labelled 1..26).

    Returns:
        ``train_x (N, 1, H, W)`` float32, labels int64 in ``[0, max label + 1)``.

    Raises:
        DataFileError: a file is missing (message says how to get it), truncated or
            malformed, or image and label counts disagree.
    """
    arrays = {}
    for key, stems in (_EMNIST_NAMES if prefix else _IDX_NAMES).items():
        stems = tuple(prefix + s for s in stems)
        try:
            arrays[key] = read_idx(_find(root, stems))
        except FileNotFoundError:
            if prefix:
                how = "Extract EMNIST's gzip IDX files (the 'gzip' archive) there, or "
            elif name == "fashion_mnist":
                how = f"Install Fashion-MNIST with `apt-get install -y dataset-fashion-mnist` (files in {DEFAULT_IDX_ROOT}), or "
            else:
                how = f"Put {name}'s 4 IDX files (train-/t10k- images and labels, raw or .gz) there, or "
            raise DataFileError(
                f"{name}: no {stems[0]}[.gz] in {root}. {how}point data.root / ${DATA_DIR_ENV} at a directory of "
                "MNIST-format IDX files"
            ) from None
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataFileError(f"{name} in {root}: {split} images {images.shape} and labels {labels.shape} do not match")

    def images(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)
        x = x.transpose(2, 3).contiguous() if transpose else x
        return (x - mean) / std

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64) - label_offset)

    train_y, test_y = labels(arrays["train_labels"]), labels(arrays["test_labels"])
    if min(train_y.min(), test_y.min()) < 0:
        raise DataFileError(f"{name} in {root}: negative label after subtracting {label_offset}")
    return TensorDataset(
        train_x=images(arrays["train_images"]),
        train_y=train_y,
        test_x=images(arrays["test_images"]),
        test_y=test_y,
        num_classes=int(max(train_y.max(), test_y.max())) + 1,
        name=name,
    )


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one dataset by name.

    Attributes:
        load: ``load(root, **options) -> TensorDataset``; ``root`` is ``data.root`` (may be None).
        summary: one line for help texts.
        options: the ``data.*`` config keys ``load`` takes as keyword arguments.
        users: True if the dataset brings its own client split (``data.partition=natural``).
    """

    load: Callable[..., TensorDataset]
    summary: str
    options: tuple[str, ...] = ()
    users: bool = False


_EMNIST_SPLITS = {"balanced": 0, "byclass": 0, "bymerge": 0, "digits": 0, "letters": 1, "mnist": 0}  # -> label offset


def _emnist(split: str) -> DatasetSpec:
    def load(root):
        return load_idx_dataset(
            dataset_root(root, "emnist"), f"emnist_{split}", 0.1751, 0.3332,
            prefix=f"emnist-{split}-", transpose=True, label_offset=_EMNIST_SPLITS[split],
        )

    return DatasetSpec(load, f"EMNIST {split} (IDX files emnist-{split}-*-ubyte[.gz], images transposed upright)")


DATASETS: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec(
        lambda root: load_idx_dataset(resolve_root(root, "fashion_mnist"), "fashion_mnist", 0.2860, 0.3530),
        "Fashion-MNIST, 60k+10k 28x28 grey images, 10 classes (IDX, Debian dataset-fashion-mnist)"),
    "mnist": DatasetSpec(
        lambda root: load_idx_dataset(resolve_root(root, "mnist"), "mnist", 0.1307, 0.3081),
        "MNIST or any MNIST-format IDX directory (data.root; default ./data/mnist)"),
    **{f"emnist_{split}": _emnist(split) for split in _EMNIST_SPLITS},
    "femnist": DatasetSpec(
        lambda root: load_femnist(dataset_root(root, "femnist")),
        "LEAF FEMNIST JSON (train/, test/), 62 classes, users = writers", users=True),
    "shakespeare": DatasetSpec(
        lambda root: load_shakespeare(dataset_root(root, "shakespeare")),
        "LEAF Shakespeare JSON, next character of 80-character sequences, users = roles", users=True),
    "synthetic": DatasetSpec(
        lambda root, num_clients=30, seed=0, synthetic_alpha=1.0, synthetic_beta=1.0: synthetic(
            num_clients, seed, synthetic_alpha, synthetic_beta),
        "Synthetic(alpha, beta) of FedProx, generated: data.num_clients devices, 60 features, 10 classes",
        options=("num_clients", "seed", "synthetic_alpha", "synthetic_beta"), users=True),
    "fcube": DatasetSpec(
        lambda root, seed=0: fcube(seed), "FCUBE of NIID-Bench, generated: 4000+1000 points in [-1,1]^3, 2 classes",
        options=("seed",)),
    **{name: DatasetSpec(lambda root, name=name: load_sklearn(name), f"scikit-learn's bundled {name} set (tabular)")
       for name in ("breast_cancer", "wine", "digits")},
    **{name: DatasetSpec(lambda root, name=name: load_libsvm(dataset_root(root, "libsvm"), name),
                         f"LIBSVM {name} ({LIBSVM_FILES[name][0]} in data.root)")
       for name in LIBSVM_FILES},
    "libsvm": DatasetSpec(
        lambda root: load_libsvm(dataset_root(root, "libsvm"), "libsvm"),
        "any LIBSVM-format file: data.root is its path (test file <path>.t if present)"),
    **{name: DatasetSpec(lambda root, name=name: load_cifar(dataset_root(root, name), name),
                         f"{name.upper()} python-pickle batches ({CIFAR[name][0]})")
       for name in CIFAR},
    "huggingface": DatasetSpec(
        lambda root, image_key="image", label_key="label", test_split=None: load_huggingface(
            dataset_root(root, "huggingface"), image_key, label_key, test_split),
        "a local Hugging Face dataset (data.root: the folder save_to_disk wrote; columns data.image_key, "
        "data.label_key; needs pip install 'fedtorch[huggingface]')",
        options=("image_key", "label_key", "test_split")),
}


def load_dataset(name: str, root: str | None = None, options: Mapping[str, Any] | None = None) -> TensorDataset:
    """Load dataset ``name`` from ``root`` (each loader's default folder if None).

    Args:
        name: a key of :data:`DATASETS`.
        root: ``data.root``.
        options: the ``data`` config section (or any mapping); the loader takes the keys
            its :attr:`DatasetSpec.options` names, and its defaults for absent ones.

    Raises:
        KeyError: unknown dataset name (message lists the known ones).
        DataFileError: missing or corrupt files.
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    spec = DATASETS[name]
    options = options or {}
    return spec.load(root, **{k: options[k] for k in spec.options if k in options})
