"""Models used by experiments, by name. Imports nothing federated.

Each factory takes ``(input_shape, num_classes)`` and returns an ``nn.Module`` mapping
``(B, *input_shape)`` inputs (float32; int64 character ids for ``char_lstm``) to
``(B, num_classes)`` logits.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from fedtorch.models.cnn import FedAvgCNN, SimpleCNN
from fedtorch.models.linear import LogisticRegression
from fedtorch.models.lstm import CharLSTM
from fedtorch.models.mlp import MLP2NN
from fedtorch.models.resnet import ResNet18, resnet18_batch_stats

MODELS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "logreg": LogisticRegression,
    "mlp": MLP2NN,
    "cnn": FedAvgCNN,
    "simple-cnn": SimpleCNN,  # NIID-Bench (Li et al., ICDE 2022)
    "char_lstm": CharLSTM,
    "resnet18": ResNet18,  # CIFAR stem, GroupNorm
    "resnet18_bn": resnet18_batch_stats,  # CIFAR stem, BatchNorm with running statistics
}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate model ``name``: a key of :data:`MODELS`, or a plug-in reference
    ``package.module:Factory`` / ``path/file.py:Factory`` to a user's
    ``(input_shape, num_classes) -> nn.Module`` (:mod:`fedtorch.experiment.plugins`).

    Raises:
        KeyError: unknown name (message lists the known ones).
        ValueError: the model does not fit the input shape; for a plug-in, a
            ``ConfigError`` (a ValueError) when it cannot be imported or called.
    """
    if ":" in name:
        from fedtorch.experiment.plugins import model_factory  # user code: resolved only when named

        return model_factory(name)(input_shape, num_classes)
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name](input_shape, num_classes)


__all__ = ["MODELS", "build_model", "CharLSTM", "FedAvgCNN", "LogisticRegression", "MLP2NN", "ResNet18", "SimpleCNN"]
