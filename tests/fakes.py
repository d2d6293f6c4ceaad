"""Stand-ins shared by tests: an analytic latency backend (and its fixture) that times nothing,
and onnxruntime helpers for the export tests."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from surgeon import latency
from surgeon.latency import Backend
from surgeon.verify import count_flops


def _padded(c: int, block: int = 16) -> int:
    return math.ceil(c / block) * block


def _layer_cost(m: nn.Module, x: torch.Tensor) -> float:
    if isinstance(m, nn.Linear):
        return 1.0 + x[..., 0].numel() * _padded(m.in_features) * _padded(m.out_features) / 1e4
    out = m(x)
    per_group_in = _padded(m.in_channels // m.groups) if m.groups > 1 else _padded(m.in_channels)
    return 1.0 + out[0, 0].numel() * _padded(m.out_channels) * per_group_in * math.prod(m.kernel_size) / 1e4


def _model_cost(model: nn.Module, x) -> float:
    return 5.0 + count_flops(model, x) / 2e4


class FakeBackend(Backend):
    """Analytic timings; counts how many layers it was asked to time."""

    def __init__(self):
        super().__init__("ort-cpu")
        self.timed = 0

    def machine(self) -> str:
        return "fake machine"

    def layers(self, cases):
        self.timed += len(cases)
        with torch.no_grad():
            return [_layer_cost(m, x) for m, x in cases]

    def model(self, model, x):
        return _model_cost(model, x), 0.01

    def ratio(self, dense, small, x):
        return _model_cost(small, x) / _model_cost(dense, x)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("SURGEON_CACHE", str(tmp_path))
    backend = FakeBackend()
    monkeypatch.setitem(latency.BACKENDS, "ort-cpu", backend)
    return backend


def ort_run(path, x: torch.Tensor) -> torch.Tensor:
    """The first output of the ONNX file at ``path`` on ``x``, in onnxruntime (CPU)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def rel_error(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float((ref.double() - out.double()).abs().max() / ref.double().abs().max())
