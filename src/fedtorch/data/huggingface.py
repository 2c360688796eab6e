"""A local Hugging Face dataset (``datasets.load_from_disk``) as in-memory tensors.

``data.dataset=huggingface`` with ``data.root`` the folder that ``Dataset.save_to_disk`` or
``DatasetDict.save_to_disk`` wrote. Only a local folder is read (no hub name, no remote
``s3://`` / ``hf://`` path), so nothing downloads. The optional ``datasets`` package is
imported only here (``pip install 'fedtorch[huggingface]'``).

Which rows and columns:

* a ``DatasetDict``: its ``"train"`` split trains, the split ``data.test_split`` (null:
  ``"test"``) tests; a single ``Dataset``: a fixed stratified 20% hold-out of it tests, as
  for the tabular sets without a test split
  (:func:`~fedtorch.data.tensors.stratified_holdout`, independent of ``data.seed``);
* the input column is ``data.image_key`` (default ``"image"``), the label column
  ``data.label_key`` (default ``"label"``).

How an input column becomes ``x (N, *input_shape)`` float32 (every row must have the same
shape):

=================================================  ==================================
column holds (per row)                             ``input_shape``
=================================================  ==================================
an ``Image`` feature, grey ``(H, W)``              ``(1, H, W)``
an ``Image`` feature, colour ``(H, W, C)``         ``(C, H, W)`` (channels first)
a 3-D array / nested list / tensor                 ``(C, H, W)`` as stored
a 2-D array / nested list / tensor ``(H, W)``      ``(1, H, W)``
a list of numbers (tabular features)               ``(D,)``
=================================================  ==================================

Scaling, as the other loaders: images are standardised per channel, tabular features per
feature, with the *training* split's mean and (population) std, a constant one divided by 1
(:func:`~fedtorch.data.tensors.standardised`). A pixel ``p`` of channel ``c`` becomes
``(p - mean_c) / std_c``: the IDX loader's ``(p / 255 - 0.2860) / 0.3530`` for Fashion-MNIST
is the same rule with that set's training statistics written as constants (dividing by 255
first changes nothing after standardising). Labels are int64; ``num_classes`` is the
``ClassLabel``'s number of names when the label column has that feature, else
``max label + 1``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedtorch.data.idx import DataFileError
from fedtorch.data.tensors import TensorDataset, standardised, stratified_holdout

NAME = "huggingface"
TEST_FRACTION = 0.2
INSTALL = "pip install 'fedtorch[huggingface]' (or pip install datasets)"


def load_huggingface(root: Path, image_key: str = "image", label_key: str = "label",
                     test_split: str | None = None) -> TensorDataset:
    """Load the dataset ``save_to_disk`` wrote to the folder ``root``.

    Args:
        root: ``data.root``, a local folder.
        image_key: ``data.image_key``, the input column.
        label_key: ``data.label_key``, the integer label column.
        test_split: ``data.test_split``, the test split of a ``DatasetDict`` (None: ``"test"``).

    Returns:
        ``train_x (N, *input_shape)`` float32 standardised (module docstring), ``train_y
        (N,)`` int64 in ``[0, num_classes)``; the test split the same way.

    Raises:
        DataFileError: ``datasets`` not installed (the message gives the pip command);
            ``root`` missing or not a saved dataset; no ``train`` or test split (the
            message lists the splits); a missing column (lists the columns); a column that
            is not numeric, has rows of different shapes, or labels that are negative or
            beyond the ``ClassLabel``; ``test_split`` given for a single ``Dataset``.
    """
    data = _load_from_disk(Path(root))
    where = f"{NAME} in {root}"
    train, test, test_name = _splits(data, test_split, where)
    num_classes = _num_classes(train, label_key)

    def read(ds, split: str | None) -> tuple[np.ndarray, np.ndarray]:
        at = f"{where}, split {split!r}" if split else where
        x = _column(ds, image_key, "data.image_key", at)
        return x, _labels(_column(ds, label_key, "data.label_key", at), label_key, at, num_classes)

    x_train, y_train = read(train, "train" if test is not None else None)
    if test is None:
        tr, te = stratified_holdout(y_train, TEST_FRACTION)
        x_train, x_test, y_train, y_test = x_train[tr], x_train[te], y_train[tr], y_train[te]
    else:
        x_test, y_test = read(test, test_name)
    image = _is_image(train, image_key)
    x_train, x_test = _inputs(x_train, image, image_key, where), _inputs(x_test, image, image_key, where)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataFileError(f"{where}: data.image_key={image_key!r} gives inputs {x_train.shape[1:]} in 'train' but "
                            f"{x_test.shape[1:]} in {test_name!r}")
    train_x, test_x = _scaled(x_train, x_test)
    if num_classes is None:
        num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return TensorDataset(train_x, torch.from_numpy(y_train), test_x, torch.from_numpy(y_test), num_classes, NAME)


def _splits(data, test_split: str | None, where: str):
    """``(train Dataset, test Dataset or None (hold-out), test split name)`` of what
    ``load_from_disk`` returned."""
    if not hasattr(data, "keys"):  # a single Dataset
        if test_split is not None:
            raise DataFileError(f"{where}: data.test_split={test_split!r} but the folder holds a single Dataset, not a "
                                "DatasetDict; leave data.test_split null (a stratified 20% hold-out tests) or save a "
                                "DatasetDict")
        return data, None, None
    splits = ", ".join(sorted(data.keys()))
    if "train" not in data:
        raise DataFileError(f"{where}: the DatasetDict has no 'train' split (it trains); its splits: {splits}")
    name = test_split or "test"
    if name not in data:
        what = f"data.test_split={test_split!r} is not a split" if test_split else "no 'test' split (data.test_split=null)"
        raise DataFileError(f"{where}: {what}; its splits: {splits}; set data.test_split to one of them")
    return data["train"], data[name], name


def _load_from_disk(root: Path):
    try:
        import datasets
    except ImportError:
        raise DataFileError(f"data.dataset={NAME} needs the Hugging Face datasets package: {INSTALL}") from None
    if not root.is_dir():
        raise DataFileError(f"{NAME}: data.root={str(root)!r} is not a local folder; point data.root at the folder "
                            "Dataset.save_to_disk / DatasetDict.save_to_disk wrote (nothing is downloaded)")
    bars_on = datasets.is_progress_bar_enabled()  # restored after: the API prints nothing
    datasets.disable_progress_bars()
    try:
        return datasets.load_from_disk(str(root))
    except FileNotFoundError:
        raise DataFileError(f"{NAME}: data.root={str(root)!r} is not a dataset saved with save_to_disk (no "
                            "dataset_dict.json or state.json); save one with Dataset.save_to_disk(path) or "
                            "DatasetDict.save_to_disk(path)") from None
    except Exception as e:  # a damaged arrow file or JSON
        raise DataFileError(f"{NAME}: data.root={str(root)!r} cannot be read by datasets.load_from_disk "
                            f"({type(e).__name__}: {e})") from None
    finally:
        if bars_on:
            datasets.enable_progress_bars()


def _column(ds, key: str, config_key: str, where: str) -> np.ndarray:
    """One column of every row as a numpy array ``(N, *row shape)`` (images decoded)."""
    if key not in ds.column_names:
        raise DataFileError(f"{where}: {config_key}={key!r} is not a column; its columns: {', '.join(ds.column_names)}")
    values = ds.with_format("numpy", columns=[key])[:][key]
    values = np.asarray(values)
    if values.dtype == object:
        shapes = sorted({np.shape(v) for v in values}, key=str)
        raise DataFileError(f"{where}: {config_key}={key!r} has rows of different shapes ({', '.join(map(str, shapes[:3]))}"
                            f"{', ...' if len(shapes) > 3 else ''}); every row needs the same shape")
    if values.dtype.kind not in "biuf":
        raise DataFileError(f"{where}: {config_key}={key!r} is not numeric (feature {ds.features[key]}, numpy dtype "
                            f"{values.dtype}); choose a column of images, numbers or arrays of numbers")
    return values


def _is_image(ds, key: str) -> bool:
    import datasets

    return isinstance(ds.features[key], datasets.Image)


def _num_classes(ds, key: str) -> int | None:
    import datasets

    feature = ds.features.get(key)  # a missing column is reported when it is read
    return feature.num_classes if isinstance(feature, datasets.ClassLabel) else None


def _labels(y: np.ndarray, key: str, where: str, num_classes: int | None) -> np.ndarray:
    integral = y.dtype.kind in "iu" or (y.dtype.kind == "f" and bool(np.all(y == np.round(y))))
    if y.ndim != 1 or not integral:
        raise DataFileError(f"{where}: data.label_key={key!r} must hold one integer label per row; got dtype {y.dtype}, "
                            f"rows of shape {y.shape[1:]} (a column of strings: ds.class_encode_column({key!r}))")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise DataFileError(f"{where}: data.label_key={key!r} has the label {int(y.min())}; labels are 0..C-1 "
                            "(-1 marks unlabelled rows in Hugging Face sets: filter them out)")
    if num_classes is not None and len(y) and y.max() >= num_classes:
        raise DataFileError(f"{where}: data.label_key={key!r} has the label {int(y.max())} but its ClassLabel has "
                            f"{num_classes} names")
    return y


def _inputs(x: np.ndarray, image: bool, key: str, where: str) -> np.ndarray:
    """``(N, *row)`` -> ``(N, D)`` (tabular) or ``(N, C, H, W)`` float32 (table in the module docstring)."""
    x = x.astype(np.float32, copy=False)
    if image and x.ndim == 4:  # decoded colour images are (N, H, W, C)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim == 3:
        return x[:, None]
    if x.ndim in (2, 4):
        return x
    raise DataFileError(f"{where}: data.image_key={key!r} rows are {x.shape[1:]}; each must be a list of numbers (D,), "
                        "an array (H, W) or (C, H, W), or an Image")


def _scaled(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardise per feature (``(N, D)``) or per channel (``(N, C, H, W)``) with the training statistics."""
    if train.ndim == 2:
        return standardised(train, test)
    channels = train.shape[1]

    def rows(a: np.ndarray) -> np.ndarray:  # (N, C, H, W) -> (N*H*W, C), a fresh float32 copy
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).reshape(-1, channels)

    def back(t: torch.Tensor, like: np.ndarray) -> torch.Tensor:
        n, _, h, w = like.shape
        return t.reshape(n, h, w, channels).permute(0, 3, 1, 2).contiguous()

    a, b = standardised(rows(train), rows(test))
    return back(a, train), back(b, test)
