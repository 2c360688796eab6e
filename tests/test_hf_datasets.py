"""Datasets from the ecosystem: a local Hugging Face dataset (``data.dataset=huggingface``,
``datasets.load_from_disk``) and torchvision-style ``Dataset`` objects handed to
``fedtorch.run(dataset=...)``. Everything is built in a tmp dir; nothing downloads.

Checks: the loaded tensors are the source pixels after the documented scaling (per-channel
standardisation with the training split's statistics; ``ToTensor``'s ``/255`` for PIL items
of a plug-in), labels and ``num_classes`` (ClassLabel, else max + 1), training through the
API and the CLI beats chance, and every bad input is one ConfigError (exit 2 in the CLI)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")  # the optional extra: pip install 'fedtorch[huggingface]'
from PIL import Image  # noqa: E402  (datasets' Image feature needs Pillow)

import fedtorch  # noqa: E402
from fedtorch.data import load_dataset  # noqa: E402
from fedtorch.experiment import dataset_plugins, plugins  # noqa: E402
from fedtorch.experiment.errors import ConfigError  # noqa: E402
from helpers import metrics, run_cli, run_dirs  # noqa: E402

from conftest import tiny_config, write_experiment  # noqa: E402

CLASSES = 4  # class k brightens quadrant k of an 8x8 image
NAMES = ["a", "b", "c", "d", "e"]  # 5 ClassLabel names, 4 used: num_classes comes from the feature


def pixels(n: int, seed: int, channels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 8x8 images (``(n, 8, 8)``, or ``(n, 8, 8, channels)``) and labels in 0..3:
    noise in [0, 60) plus 150 on the labelled quadrant (channel c also + 20 c)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, size=n)
    x = rng.integers(0, 60, size=(n, 8, 8, max(channels, 1))).astype(np.uint8)
    for i, k in enumerate(y):
        r, c = divmod(int(k), 2)
        x[i, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 150
    x += (20 * np.arange(max(channels, 1))).astype(np.uint8)
    return (x if channels else x[..., 0]), y


def standardise(train: np.ndarray, test: np.ndarray, axis) -> tuple[np.ndarray, np.ndarray]:
    """The documented rule, in float64: (p - mean) / std over ``axis`` of the training data."""
    mean = train.astype(np.float64).mean(axis=axis, keepdims=True)
    std = train.astype(np.float64).std(axis=axis, keepdims=True)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


@pytest.fixture(scope="module")
def source():
    """The arrays the saved datasets hold: grey 200 train / 100 test, RGB 120 / 60."""
    return {"grey": (pixels(200, 0), pixels(100, 1)), "rgb": (pixels(120, 2, 3), pixels(60, 3, 3))}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, source):
    """Saved datasets: ``grey`` (DatasetDict train/test, ``image`` Image + ``label`` ClassLabel),
    ``custom`` (RGB ``pixels``, int ``target``, string ``caption``, int ``id``; splits train/validation),
    ``arrays`` (1x8x8 tensors and 8x8 nested lists), ``tabular`` (lists of floats, one Dataset)."""
    root = tmp_path_factory.mktemp("hf")
    (gx, gy), (tx, ty) = source["grey"]
    grey = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})

    def grey_split(x, y):
        return datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in x], "label": y.tolist()}, features=grey)

    datasets.DatasetDict({"train": grey_split(gx, gy), "test": grey_split(tx, ty)}).save_to_disk(root / "grey")
    (rx, ry), (vx, vy) = source["rgb"]
    datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"pixels": [Image.fromarray(a, "RGB") for a in x], "target": y.tolist(),
                                           "caption": [f"class {k}" for k in y], "id": list(range(len(y)))})
        for split, (x, y) in (("train", (rx, ry)), ("validation", (vx, vy)))
    }).save_to_disk(root / "custom")
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"image": [torch.from_numpy(a[None]).float() for a in gx], "label": gy}),
        "test": datasets.Dataset.from_dict({"image": tx.tolist(), "label": ty}),  # (8, 8) nested lists
    }).save_to_disk(root / "arrays")
    rng = np.random.default_rng(4)
    features = rng.normal(size=(300, 5)) * [1, 2, 3, 4, 5] + [0, 1, 2, 3, 4]
    datasets.Dataset.from_dict({"features": features.tolist(), "label": (features[:, 0] > 0).astype(int)}
                               ).save_to_disk(root / "tabular")
    (root / "not_saved").mkdir()
    return root


def hf_config(tmp_path, root, **data) -> dict:
    cfg = tiny_config(root, tmp_path / "runs", data__dataset="huggingface", data__num_clients=4,
                      federation={"clients_per_round": 4}, client={"local_epochs": 2, "batch_size": 16, "lr": 0.1})
    cfg["data"].update(data)
    return cfg


# ---- (a) what is loaded ---------------------------------------------------------------------
def test_image_feature_loads_as_standardised_source_pixels(hf_dirs, source):
    (gx, gy), (tx, ty) = source["grey"]
    ds = load_dataset("huggingface", str(hf_dirs / "grey"))
    assert ds.train_x.shape == (200, 1, 8, 8) and ds.test_x.shape == (100, 1, 8, 8)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    want_train, want_test = standardise(gx[:, None], tx[:, None], axis=(0, 2, 3))
    torch.testing.assert_close(ds.train_x, torch.from_numpy(want_train).float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(ds.test_x, torch.from_numpy(want_test).float(), rtol=0, atol=1e-5)
    # undoing the documented scaling gives back every source pixel exactly
    mean, std = gx.astype(np.float64).mean(), gx.astype(np.float64).std()
    assert np.array_equal(np.rint(ds.test_x.double().numpy() * std + mean)[:, 0], tx)
    assert torch.equal(ds.train_y, torch.from_numpy(gy)) and torch.equal(ds.test_y, torch.from_numpy(ty))
    assert ds.num_classes == len(NAMES)  # the ClassLabel's 5 names, not max label + 1 = 4


def test_custom_columns_rgb_channels_first_and_a_named_test_split(hf_dirs, source):
    (rx, ry), (vx, vy) = source["rgb"]
    ds = load_dataset("huggingface", str(hf_dirs / "custom"),
                      {"image_key": "pixels", "label_key": "target", "test_split": "validation"})
    assert ds.train_x.shape == (120, 3, 8, 8) and ds.test_x.shape == (60, 3, 8, 8)
    chw = rx.transpose(0, 3, 1, 2), vx.transpose(0, 3, 1, 2)
    want_train, want_test = standardise(*chw, axis=(0, 2, 3))  # one mean and std per channel
    torch.testing.assert_close(ds.train_x, torch.from_numpy(want_train).float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(ds.test_x, torch.from_numpy(want_test).float(), rtol=0, atol=1e-5)
    assert torch.equal(ds.test_y, torch.from_numpy(vy)) and ds.num_classes == int(max(ry.max(), vy.max())) + 1


def test_tensor_and_nested_list_columns_and_tabular_features(hf_dirs, source):
    (gx, _), (tx, _) = source["grey"]
    arrays = load_dataset("huggingface", str(hf_dirs / "arrays"))
    grey = load_dataset("huggingface", str(hf_dirs / "grey"))
    assert arrays.train_x.shape == (200, 1, 8, 8) and arrays.test_x.shape == (100, 1, 8, 8)  # (1,8,8) and (8,8) rows
    torch.testing.assert_close(arrays.train_x, grey.train_x, rtol=0, atol=1e-5)
    torch.testing.assert_close(arrays.test_x, grey.test_x, rtol=0, atol=1e-5)
    tab = load_dataset("huggingface", str(hf_dirs / "tabular"), {"image_key": "features"})
    assert tab.train_x.shape[1:] == (5,) and len(tab.train_y) + len(tab.test_y) == 300
    # a single Dataset: the fixed stratified 20% hold-out tests; features z-scored with the training rows
    assert len(tab.test_y) == 60 and tab.num_classes == 2
    torch.testing.assert_close(tab.train_x.mean(0), torch.zeros(5), rtol=0, atol=1e-5)
    torch.testing.assert_close(tab.train_x.std(0, unbiased=False), torch.ones(5), rtol=0, atol=1e-5)


# ---- (a) training through the API and the CLI ------------------------------------------------
def test_api_trains_above_chance(tmp_path, hf_dirs):
    result = fedtorch.run(hf_config(tmp_path, str(hf_dirs / "grey")), rounds=3, output_dir=tmp_path / "api")
    assert len(result.metrics) == 3 and result.config["data"]["dataset"] == "huggingface"
    assert result.metrics[-1]["test_accuracy"] > 0.6  # chance: about 1/4


def test_cli_trains_with_custom_columns(capsys, tmp_path, hf_dirs):
    folder = write_experiment(tmp_path, "A0d5C10", tiny_config(hf_dirs, tmp_path / "runs"))
    code, _, err = run_cli(capsys, "run", folder, "data.dataset=huggingface", f"data.root={hf_dirs / 'custom'}",
                           "data.image_key=pixels", "data.label_key=target", "data.test_split=validation",
                           "rounds=3", "client.lr=0.1", "client.local_epochs=2")
    assert code == 0, err
    (run_dir,) = run_dirs(tmp_path / "runs")
    assert metrics(run_dir)[-1]["test_accuracy"] > 0.6


# ---- (a) errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "where, overrides, message",
    [
        ("missing", [], "data.root='{root}' is not a local folder"),
        ("not_saved", [], "data.root='{root}' is not a dataset saved with save_to_disk"),
        ("grey", ["data.image_key=img"], "data.image_key='img' is not a column; its columns: image, label"),
        ("grey", ["data.label_key=y"], "data.label_key='y' is not a column; its columns: image, label"),
        ("custom", ["data.image_key=pixels", "data.label_key=target"],
         "no 'test' split (data.test_split=null); its splits: train, validation"),
        ("grey", ["data.test_split=valid"], "data.test_split='valid' is not a split; its splits: test, train"),
        ("tabular", ["data.image_key=features", "data.test_split=test"], "holds a single Dataset, not a DatasetDict"),
        ("custom", ["data.image_key=caption", "data.label_key=target", "data.test_split=validation"],
         "data.image_key='caption' is not numeric"),
        ("custom", ["data.image_key=pixels", "data.label_key=caption", "data.test_split=validation"],
         "data.label_key='caption' is not numeric"),
        ("custom", ["data.image_key=id", "data.label_key=target", "data.test_split=validation"],
         "data.image_key='id' rows are (); each must be a list of numbers (D,), an array (H, W) or (C, H, W)"),
        ("grey", ["data.label_key=image"], "data.label_key='image' is not allowed: must name another column than data.image_key"),
        ("grey", ["data.image_key=' '"], "data.image_key=' ' is not allowed: must be a non-empty column"),
    ],
)
def test_bad_input_is_one_config_error_exit_2(capsys, tmp_path, hf_dirs, where, overrides, message):
    root = hf_dirs / where
    folder = write_experiment(tmp_path, "A0d5C10", tiny_config(root, tmp_path / "runs"))
    code, _, err = run_cli(capsys, "run", folder, "data.dataset=huggingface", f"data.root={root}", *overrides)
    assert code == 2 and message.format(root=root) in err, err
    assert err.count("\n") == 1 and run_dirs(tmp_path / "runs") == []  # one line, before any run directory


def test_api_raises_config_error_for_a_missing_column(tmp_path, hf_dirs):
    with pytest.raises(ConfigError, match="data.image_key='img' is not a column; its columns: image, label"):
        fedtorch.run(hf_config(tmp_path, str(hf_dirs / "grey"), image_key="img"), rounds=1)


def test_without_the_datasets_package_the_error_gives_the_pip_command(tmp_path, hf_dirs, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(ConfigError, match=r"needs the Hugging Face datasets package: pip install 'fedtorch\[huggingface\]'"):
        fedtorch.run(hf_config(tmp_path, str(hf_dirs / "grey")), rounds=1)


# ---- (b) torchvision-style Dataset objects through the API -----------------------------------
class FolderStyleDataset:
    """What a torchvision dataset looks like (no torch ``Dataset`` base, no torchvision):
    ``__len__``, and ``__getitem__`` -> ``(PIL image or transform(image), int label)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L")
        return (self.transform(img) if self.transform else img), int(self.labels[i])


def to_signed_tensor(img) -> torch.Tensor:
    """A transform: PIL -> (1, H, W) float32 in [-1, 1] (ToTensor then Normalize(0.5, 0.5))."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).div(255).sub(0.5).div(0.5)[None]


def test_a_pair_of_dataset_objects_is_materialised_as_pil_to_tensor_or_its_transform(source):
    (gx, gy), (tx, ty) = source["grey"]
    plain = dataset_plugins.load_dataset(plugins.provide(dataset_plugins.dataset_pair((FolderStyleDataset(gx, gy),
                                                                       FolderStyleDataset(tx, ty)))))
    assert plain.train_x.shape == (200, 1, 8, 8) and plain.train_x.dtype == torch.float32
    assert torch.equal(plain.train_x, torch.from_numpy(gx[:, None]).float() / 255)  # ToTensor's rule for PIL items
    assert torch.equal(plain.test_y, torch.from_numpy(ty)) and plain.num_classes == CLASSES
    with_transform = dataset_plugins.load_dataset(plugins.provide(dataset_plugins.dataset_pair(
        (FolderStyleDataset(gx, gy, to_signed_tensor), FolderStyleDataset(tx, ty, to_signed_tensor)))))
    assert torch.equal(with_transform.test_x, torch.stack([to_signed_tensor(Image.fromarray(a)) for a in tx]))


@pytest.mark.parametrize("form", ["pair", "callable"])
def test_api_trains_on_torchvision_style_datasets(tmp_path, source, form):
    (gx, gy), (tx, ty) = source["grey"]
    train, test = FolderStyleDataset(gx, gy, to_signed_tensor), FolderStyleDataset(tx, ty, to_signed_tensor)
    dataset = (train, test) if form == "pair" else (lambda: (train, test))
    cfg = hf_config(tmp_path, None)
    result = fedtorch.run(cfg, rounds=3, output_dir=tmp_path / form, dataset=dataset)
    assert len(result.metrics) == 3 and result.metrics[-1]["test_accuracy"] > 0.6


def test_a_dataset_tuple_that_is_not_two_datasets_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset=\(int, int\) is not allowed: give \(train_dataset, test_dataset\)"):
        fedtorch.run(hf_config(tmp_path, None), rounds=1, dataset=(1, 2))


def test_the_example_of_docs_datasets_ecosystem_md_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its mkdtemp() folders go under tmp_path
    text = (Path(__file__).resolve().parents[1] / "docs" / "datasets_ecosystem.md").read_text()
    code = text.split("```python hf\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/datasets_ecosystem.md", "exec"), {})
    assert float(capsys.readouterr().out.strip()) > 0.6
