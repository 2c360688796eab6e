"""Character-level LSTM for next-character prediction (LEAF Shakespeare): the model of
McMahan et al., AISTATS 2017, Sec. 3 and of LEAF (Caldas et al. 2018): an 8-dimensional
character embedding, two LSTM layers of 256 units and a linear layer on the last output."""

import torch
from torch import nn


class CharLSTM(nn.Module):
    """``(B, L)`` int64 character ids -> ``(B, num_classes)`` logits for the next character.

    The vocabulary is the set of classes (``num_classes`` characters, 80 for LEAF
    Shakespeare), so ids must lie in ``[0, num_classes)``. No buffers: the LSTM state is
    not kept between batches. 819,920 parameters for 80 characters.

    Raises:
        ValueError: input is not a 1-D sequence shape ``(L,)``.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, embed: int = 8, hidden: int = 256, layers: int = 2):
        if len(input_shape) != 1:
            raise ValueError(f"char_lstm needs (L,) sequences of character ids, got input shape {input_shape}")
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, L)`` character ids (any integer or float dtype holding integers, cast to
        int64) -> ``(B, num_classes)`` logits of the character after the last one.

        Raises:
            IndexError: an id outside ``[0, num_classes)`` (from the embedding).
        """
        h, _ = self.lstm(self.embed(x.long()))
        return self.out(h[:, -1])
