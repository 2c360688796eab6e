"""The FedAvg paper's CNN (McMahan et al., AISTATS 2017, Sec. 3): two 5x5 convolutions
(32 and 64 channels, "same" padding), each followed by ReLU and 2x2 max pooling, a
fully connected layer of 512 ReLU units and a linear output layer."""

from torch import nn


class FedAvgCNN(nn.Sequential):
    """``(B, C, H, W) -> (B, num_classes)``; 1,663,370 parameters for 1x28x28, 10 classes.

    Raises:
        ValueError: input is not an image ``(C, H, W)`` with H and W divisible by 4.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        if len(input_shape) != 3 or input_shape[1] % 4 or input_shape[2] % 4:
            raise ValueError(f"cnn needs (C, H, W) inputs with H, W divisible by 4, got {input_shape}")
        c, h, w = input_shape
        super().__init__(
            nn.Conv2d(c, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )


class SimpleCNN(nn.Sequential):
    """NIID-Bench's "simple-cnn" (Li et al., ICDE 2022; ``SimpleCNNMNIST`` and ``SimpleCNN``
    in github.com/Xtra-Computing/NIID-Bench ``model.py``, read at its master branch): LeNet-5
    style, 5x5 convolutions of 6 and 16 channels without padding, each followed by ReLU and
    2x2 max pooling, then fully connected 120 and 84 ReLU units and a linear output layer.

    ``(B, C, H, W) -> (B, num_classes)``. For 1x28x28 (the flattened map is 16x4x4) and
    10 classes it has 44,426 parameters, as NIID-Bench's ``SimpleCNNMNIST``; for 3x32x32
    (16x5x5) 62,006, as its ``SimpleCNN``.

    Raises:
        ValueError: input is not an image ``(C, H, W)`` large enough for two valid 5x5
            convolutions and two poolings (H, W >= 16).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        if len(input_shape) != 3 or min(input_shape[1:]) < 16:
            raise ValueError(f"simple-cnn needs (C, H, W) inputs with H, W >= 16, got {input_shape}")
        c, h, w = input_shape
        fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        super().__init__(
            nn.Conv2d(c, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Flatten(),
            nn.Linear(16 * fh * fw, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )
