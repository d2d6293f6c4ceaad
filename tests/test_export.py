"""surgeon.exporters.onnx: dense files that match PyTorch, edge formats, and refusals.

The zoo part shrinks each model to half its FLOPs and exports it: the file must match PyTorch in
onnxruntime within 1e-4 relative, and hold exactly the shrunk model's parameters up to BatchNorm
folding (the report's accounting, predicted from the model, not read off the file). A
representative subset runs by default; `pytest -m zoo` runs every torchvision classifier.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

from fakes import ort_run as _run, rel_error as _rel
from torch import nn

import surgeon
from surgeon.exporters.onnx import ExportError, ExportReport, export
from surgeon.verify import count_params
from helpers import MIN_STD, reference_output
from zoo import build, zoo_names

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SUBSET = ["resnet50", "mobilenet_v3_large", "efficientnet_b0", "densenet121", "convnext_tiny", "vit_b_16",
          "shufflenet_v2_x1_0"]
ZOO = [pytest.param(n, id=n) for n in SUBSET] + \
      [pytest.param(n, id=n, marks=pytest.mark.zoo) for n in zoo_names() if n not in SUBSET]


def _initializer_dtypes(path) -> set[int]:
    return {t.data_type for t in onnx.load(str(path)).graph.initializer if len(t.dims)}


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# -- the zoo: every shrunk model exports dense and matches --------------------------------------------
@pytest.mark.parametrize("name", ZOO)
def test_zoo_export(name, tmp_path):
    model, x = build(name)
    reference_output(model, x)  # values with spread and none degenerate (no all-zero biases)
    small = surgeon.shrink(model, x, target=0.5)
    path = tmp_path / f"{name}.onnx"
    rep = export(small, x, path)
    assert rep.max_rel_error <= 1e-4 and rep.batch_sizes == (1, 2)
    assert rep.params == count_params(small) < count_params(model)
    assert rep.eliminated == 0, rep.notes
    assert rep.weights == rep.params - rep.folded - rep.unused + rep.derived
    assert rep.bn_folded <= _bn_count(small)
    assert rep.bn_was_folded == (rep.bn_folded > 0)
    assert os.listdir(tmp_path) == [path.name], "scratch files left behind"
    # an independent look: onnxruntime on a batch the exporter never saw
    x3 = torch.randn(3, *x.shape[1:])
    with torch.no_grad():
        ref = small(x3)
    assert float(ref.std()) > MIN_STD
    assert _rel(ref, _run(path, x3)) <= 1e-4


def test_bn_accounting_known_answer(tmp_path):
    """conv -> BN (folded: 2*16 affine params gone, a 16-wide bias added), BN after a ReLU (kept:
    its running statistics, 2*8, are in the file), an auxiliary head the forward never reads."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 16, 3, bias=False), nn.BatchNorm2d(16)
            self.mid, self.pre = nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8)
            self.fc, self.aux = nn.Linear(8, 5), nn.Linear(16, 5)

        def forward(self, x):
            h = self.mid(torch.relu(self.bn(self.conv(x))))
            h = self.pre(torch.relu(h))
            return self.fc(h.mean((2, 3)))

    model = Net().eval()
    reference_output(model, torch.randn(2, 3, 12, 12))
    rep = export(model, torch.randn(2, 3, 12, 12), tmp_path / "net.onnx")
    assert (rep.bn_folded, rep.unused, rep.eliminated) == (1, 16 * 5 + 5, 0)
    assert (rep.folded, rep.derived) == (2 * 16 - 16, 2 * 8)
    assert rep.weights == rep.params - rep.folded - rep.unused + rep.derived


class PositionBias(nn.Module):
    """Swin-like constants: a bias gathered from a table by an index buffer, a mask built from
    shapes, a class token expanded per batch. The exporters precompute the first two."""

    def __init__(self, n: int = 6, heads: int = 2):
        super().__init__()
        self.n, self.heads = n, heads
        self.table = nn.Parameter(torch.randn(2 * n - 1, heads))
        idx = torch.arange(n)
        self.register_buffer("index", (idx[:, None] - idx[None, :] + n - 1).reshape(-1))
        self.token = nn.Parameter(torch.randn(1, 1, 8))
        self.qk = nn.Linear(8, 2 * heads * 4)

    def forward(self, x):  # x: (batch, n - 1, 8)
        x = torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)
        q, k = self.qk(x).view(x.shape[0], self.n, 2, self.heads, 4).permute(2, 0, 3, 1, 4)
        bias = self.table[self.index].view(self.n, self.n, self.heads).permute(2, 0, 1)
        mask = x.new_zeros(self.n, self.n)
        mask[: self.n // 2, self.n // 2:] = -1.0
        return (q @ k.transpose(-1, -2) + bias + mask).flatten(1)


def test_precomputed_constants_are_predicted(tmp_path):
    model = PositionBias().eval()
    rep = export(model, torch.randn(2, 5, 8), tmp_path / "p.onnx")
    n, heads = model.n, model.heads
    assert rep.unused == 0 and rep.eliminated == 0, rep
    assert rep.derived == heads * n * n + n * n - model.table.numel()  # bias and mask in, table out
    assert rep.weights == rep.params - rep.folded - rep.unused + rep.derived


def test_all_zero_bias_is_reported_as_eliminated(tmp_path):
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        net[0].bias.zero_()
    rep = export(net, torch.randn(2, 8), tmp_path / "net.onnx")
    assert rep.weights in (rep.params, rep.params - 16)  # the optimizer may drop the zero bias
    assert rep.eliminated == rep.params - rep.weights
    assert bool(rep.eliminated) == any("missing from the file" in n for n in rep.notes)


# -- edge formats --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def edge_model():
    torch.manual_seed(0)
    model, x = build("mobilenet_v3_small")
    reference_output(model, x)
    return surgeon.shrink(model, x, target=0.5), x


@pytest.fixture(scope="module")
def fp32_size(edge_model, tmp_path_factory):
    small, x = edge_model
    return export(small, x, tmp_path_factory.mktemp("fp32") / "m.onnx").file_bytes


def test_fp16_and_its_ort_file(edge_model, fp32_size, tmp_path):
    small, x = edge_model
    rep = export(small, x, tmp_path / "m.onnx", dtype="fp16", ort_format=True)
    assert rep.dtype == "fp16" and rep.max_rel_error <= 1e-2
    assert rep.weights == rep.params - rep.folded - rep.unused + rep.derived  # a cast, not another model
    assert rep.file_bytes < 0.6 * fp32_size
    assert onnx.TensorProto.FLOAT16 in _initializer_dtypes(tmp_path / "m.onnx")
    assert rep.agreement >= 0.9 and rep.ort_agreement >= 0.9 and rep.ort_max_rel_error <= 1e-2
    with torch.no_grad():
        ref = small(x)
    assert _rel(ref, _run(tmp_path / "m.onnx", x)) <= 1e-2  # inputs and outputs stay float32
    assert _rel(ref, _run(tmp_path / "m.ort", x)) <= 1e-2
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.ort"]


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8(edge_model, fp32_size, tmp_path, mode):
    small, x = edge_model
    calib = [torch.randn(4, *x.shape[1:]) for _ in range(4)] if mode == "static" else None
    # the recipe itself, every node quantized (mixed precision, which keeps nodes fp32 where the
    # runtime measures int8 slower, has its own tests in test_int8.py)
    rep = export(small, x, tmp_path / "m.onnx", quantize=mode, calibration=calib, mixed_precision=False)
    assert rep.quantize == mode
    assert rep.agreement >= 0.8, f"top-1 agreement of the {mode} int8 file: {rep.agreement}"
    assert rep.file_bytes < 0.45 * fp32_size
    assert _initializer_dtypes(tmp_path / "m.onnx") & {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    out = _run(tmp_path / "m.onnx", x)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_ort_format_fp32(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    reference_output(net, torch.randn(2, 3, 8, 8))
    rep = export(net, torch.randn(2, 3, 8, 8), tmp_path / "n.onnx", ort_format=True)
    assert rep.ort_path == str(tmp_path / "n.ort") and rep.ort_max_rel_error <= 1e-4 and rep.ort_agreement == 1.0
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert _rel(net(x), _run(tmp_path / "n.ort", x)) <= 1e-4
    assert (tmp_path / "n.ort").read_bytes()[4:8] == b"ORTM"  # the flatbuffer file identifier


# -- exporter choice -------------------------------------------------------------------------------------
class DataBranch(nn.Module):
    """torch.export refuses a branch on a tensor's value; the TorchScript exporter records one path."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        if float(y.mean()) > -1e9:
            y = y * 2
        return self.fc(y.mean((2, 3)))


def test_falls_back_to_torchscript_with_the_reason(tmp_path, caplog):
    model = DataBranch().eval()
    reference_output(model, torch.randn(2, 3, 10, 10))
    with caplog.at_level(logging.WARNING, logger="surgeon.exporters.onnx"):
        rep = export(model, torch.randn(1, 3, 10, 10), tmp_path / "d.onnx")
    assert rep.exporter == "torchscript" and rep.batch_sizes == (1, 2)
    assert any("dynamo exporter failed" in n and "guard" in n.lower() for n in rep.notes), rep.notes
    assert "falling back to the TorchScript exporter" in caplog.text
    assert rep.weights == rep.params - rep.folded - rep.unused + rep.derived and rep.bn_folded == 1


def test_one_capture_serves_several_formats_until_the_model_changes(tiny, tmp_path, monkeypatch):
    calls = []
    real = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, x = tiny
    export(model, x, tmp_path / "a.onnx")
    export(model, x, tmp_path / "b.onnx", dtype="fp16")
    assert len(calls) == 1
    with torch.no_grad():
        model[0].weight.mul_(2)  # in place: the next export must trace the new weights
    rep = export(model, x, tmp_path / "c.onnx")
    assert len(calls) == 2 and rep.max_rel_error <= 1e-4
    export(model, torch.randn(2, 8), tmp_path / "d.onnx", opset=17)
    assert len(calls) == 3


def test_static_batch(tmp_path):
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    rep = export(net, torch.randn(3, 8), tmp_path / "s.onnx", dynamic_batch=False, simplify=False)
    assert rep.batch_sizes == (3,) and not rep.simplified
    dims = onnx.load(str(tmp_path / "s.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 3


# -- bad input: clear errors, nothing left behind ----------------------------------------------------------
@pytest.fixture
def tiny():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval(), torch.randn(2, 8)


@pytest.mark.parametrize("where, match", [
    ("missing/m.onnx", "does not exist"),
    ("a_file/m.onnx", "is a file"),
    ("a_dir", "is a folder"),
])
def test_unwritable_path(tiny, tmp_path, where, match):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_dir").mkdir()
    with pytest.raises(ExportError, match=match):
        export(*tiny, tmp_path / where)
    assert sorted(os.listdir(tmp_path)) == ["a_dir", "a_file"] and not os.listdir(tmp_path / "a_dir")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_folder(tiny, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ExportError, match="not writable"):
            export(*tiny, ro / "m.onnx")
        assert not os.listdir(ro)
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("kwargs, match", [
    ({"dtype": "int8"}, "dtype='fp32'.*dtype='fp16'.*quantize="),
    ({"dtype": "float16"}, "unknown dtype 'float16'"),
    ({"quantize": "qat"}, "unknown quantize mode 'qat'.*'dynamic' or 'static'"),
    ({"quantize": "static"}, "needs calibration="),
    ({"quantize": "static", "calibration": []}, "calibration is empty"),
    ({"quantize": "auto", "calibration": []}, "calibration is empty"),
    ({"quantize": "auto", "calibration": "no/such/folder"}, "calibration no/such/folder not found"),
    ({"quantize": "static", "calibration": [torch.randn(2, 9)]}, "calibration sample 0 has input shapes"),
    ({"quantize": "dynamic", "calibration": [torch.randn(2, 8)]}, "only used by quantize='static'"),
    ({"quantize": "dynamic", "dtype": "fp16"}, "pass dtype='fp32' with quantize='dynamic'"),
    ({"opset": "18"}, "opset must be"),
])
def test_bad_options(tiny, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export(*tiny, tmp_path / "m.onnx", **kwargs)
    assert not os.listdir(tmp_path)


def test_failed_parity_leaves_nothing_and_keeps_an_old_file(tiny, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"the previous export")
    with pytest.raises(ExportError, match="differs from PyTorch.*relative error"):
        export(*tiny, tmp_path / "m.onnx", rtol=-1.0, ort_format=True)  # any error, even 0.0, is too much
    assert os.listdir(tmp_path) == ["m.onnx"] and (tmp_path / "m.onnx").read_bytes() == b"the previous export"


def test_a_simplifier_that_changes_results_is_not_trusted(tiny, tmp_path, monkeypatch):
    from surgeon.exporters import _edge

    def broken(src, dst, notes):  # a simplifier bug: one weight doubled
        m = onnx.load(src)
        t = next(t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2)
        t.CopyFrom(onnx.numpy_helper.from_array(2 * onnx.numpy_helper.to_array(t), t.name))
        onnx.save(m, dst)
        return True

    monkeypatch.setattr(_edge, "simplify", broken)
    rep = export(*tiny, tmp_path / "m.onnx")
    assert not rep.simplified and rep.max_rel_error <= 1e-4
    assert any("onnxslim changed the results" in n for n in rep.notes)
    assert os.listdir(tmp_path) == ["m.onnx"]


class Unexportable(nn.Module):
    def forward(self, x):
        return torch.linalg.eigvalsh(x @ x.transpose(-1, -2))  # no ONNX operator for it in either exporter


def test_export_failure_says_so_and_leaves_nothing(tmp_path):
    with pytest.raises(ExportError, match="neither the dynamo nor the TorchScript exporter.*eigvalsh"):
        export(Unexportable(), torch.randn(2, 4, 4), tmp_path / "u.onnx")
    assert not os.listdir(tmp_path)


def test_report_is_frozen_and_public(tiny, tmp_path):
    rep = export(*tiny, tmp_path / "m.onnx")
    assert isinstance(rep, ExportReport) and os.path.getsize(rep.path) == rep.file_bytes
    with pytest.raises(AttributeError):
        rep.weights = 0
    assert set(surgeon.exporters.onnx.__all__) == {"export", "ExportReport", "ExportError"}
