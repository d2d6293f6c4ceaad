"""Shrink a recurrent text classifier (Embedding -> bidirectional LSTM -> Linear) to half its FLOPs.

Every hidden unit of the LSTM owns one row of each of its four gate blocks in every layer and
direction, so surgeon removes whole units: ``hidden_size`` and ``input_size`` shrink, the next
layer and the classifier lose the matching columns of [forward, backward], and the result is a
plain, smaller ``nn.LSTM`` (``flatten_parameters()`` works, ``_flat_weights`` are the new tensors).

    python examples/shrink_lstm.py
"""

import warnings

import torch
from torch import nn

import surgeon
from surgeon.errors import OffTargetWarning
from surgeon.verify import count_flops


class TextClassifier(nn.Module):
    def __init__(self, vocab: int = 1000, embed: int = 64, hidden: int = 128, classes: int = 4):
        super().__init__()
        self.emb = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, (h_n, c_n) = self.lstm(self.emb(ids))
        return self.fc(out[:, -1])


def main() -> None:
    torch.manual_seed(0)
    model = TextClassifier().eval()
    ids = torch.randint(0, 1000, (8, 32))

    with warnings.catch_warnings():
        warnings.simplefilter("error", OffTargetWarning)  # a missed target would say so, loudly
        small = surgeon.shrink(model, ids, target=0.5)

    ratio = count_flops(small, ids) / count_flops(model, ids)
    print(f"before: {model.lstm}, {count_flops(model, ids) / 1e6:.1f} MFLOPs")
    print(f"after:  {small.lstm}, {count_flops(small, ids) / 1e6:.1f} MFLOPs ({ratio:.3f} of the original)")
    assert abs(ratio - 0.5) <= 0.01
    small.lstm.flatten_parameters()  # the sliced module is an ordinary nn.LSTM
    print("output shape:", tuple(small(ids).shape))


if __name__ == "__main__":
    main()
