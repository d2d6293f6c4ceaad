"""int8 that pays off: the mode chosen from the model and the data, calibration read without pickle,
mixed precision by measurement, and the CLI's ``--int8 --calibration`` through the console script."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

from surgeon.errors import SurgeonError  # noqa: E402
from surgeon.exporters import calibration, int8  # noqa: E402
from surgeon.exporters.onnx import export  # noqa: E402

SURGEON = shutil.which("surgeon")


class ConvNet(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()


def _calib(shape, n: int = 6, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, *shape, generator=gen) for _ in range(n)]


def _fp32_weighted(path: Path) -> set[str]:
    """The Conv/MatMul/Gemm nodes of a QDQ file whose weight is a float initializer (not int8)."""
    model = onnx.load(str(path))
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return {n.name for n in model.graph.node if n.op_type in int8.COMPUTE and len(n.input) > 1
            and n.input[1] in floats}


# ---- the mode ------------------------------------------------------------------------------------------
def test_mode_follows_the_model_and_the_data():
    assert int8.choose_mode({"conv": 0.9, "matmul": 0.1}, calibrated=True) == "static"
    assert int8.choose_mode({"conv": 0.1, "matmul": 0.9}, calibrated=False) == "dynamic"
    with pytest.raises(int8.CalibrationNeeded, match="--calibration.*calibration="):
        int8.choose_mode({"conv": 0.9, "matmul": 0.1}, calibrated=False)


def test_conv_net_without_calibration_is_a_clear_error(tmp_path):
    net, path = ConvNet().eval(), tmp_path / "c.onnx"
    with pytest.raises(SurgeonError, match=r"(?s)slower than its fp32 file.*--calibration.*calibration="):
        export(net, torch.randn(1, 1, 12, 12), path, quantize="auto")
    assert not path.exists() and os.listdir(tmp_path) == []


def test_matmul_model_without_calibration_is_dynamic(tmp_path):
    rep = export(mlp(), torch.randn(1, 64), tmp_path / "m.onnx", quantize="auto")
    assert rep.quantize == "dynamic"
    assert rep.agreement_inputs.startswith("32 random inputs") and "no calibration data" in rep.agreement_inputs


def test_static_with_calibration_reports_agreement_on_held_out_samples(tmp_path):
    torch.manual_seed(0)
    net = ConvNet().eval()
    rep = export(net, torch.randn(1, 1, 12, 12), tmp_path / "c.onnx", quantize="auto",
                 calibration=_calib((1, 12, 12), n=10), mixed_precision=False)
    assert rep.quantize == "static"
    assert rep.agreement_inputs == "8 held-out calibration samples"  # 2 of 10 batches of 4
    assert rep.agreement >= 0.75
    kinds = {n.op_type for n in onnx.load(rep.path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds


# ---- mixed precision -----------------------------------------------------------------------------------
def test_plan_keeps_fp32_where_int8_is_slower_or_error_prone():
    kinds = {"conv_a": "Conv", "dw": "DepthwiseConv", "ln": "LayerNormalization", "add": "Add", "mm": "MatMul"}
    timings = {"Conv": int8.NodeTiming(10.0, 6.0), "DepthwiseConv": int8.NodeTiming(10.0, 10.5),
               "MatMul": int8.NodeTiming(10.0, 9.0)}
    plan = int8.plan_precision(kinds, timings, noisy={"mm": 12.0})
    assert plan.exclude == ("dw",)  # float weights: its kind measured slower in int8
    why = dict(plan.reasons)
    assert set(why) == {"dw", "ln", "mm"}
    assert "slower in int8" in why["dw"] and "LayerNormalization" in why["ln"] and "SNR" in why["mm"]
    assert plan.saved_ms == pytest.approx(5.0)  # Conv and MatMul, which stay int8
    assert any(line.startswith("1 node(s) left fp32") and "dw" in line for line in plan.summary())


class DepthwiseNet(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.conv3 = nn.Conv2d(width, width, 1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv3(torch.relu(self.dw(x))))
        return self.fc(x.mean((2, 3)))


def test_export_leaves_a_kind_fp32_when_measured_slower(tmp_path, monkeypatch):
    torch.manual_seed(0)
    seen = {}

    def fake_timings(qdq, float_model, kinds, feed, rounds=7):  # depthwise convs slower in int8
        seen.update({n: k for n, k in kinds.items() if k == "DepthwiseConv"})
        return {"Conv": int8.NodeTiming(2.0, 1.0), "DepthwiseConv": int8.NodeTiming(1.0, 1.5),
                "Gemm": int8.NodeTiming(2.0, 1.0)}

    monkeypatch.setattr(int8, "time_kinds", fake_timings)
    net, x = DepthwiseNet().eval(), torch.randn(1, 1, 12, 12)
    rep = export(net, x, tmp_path / "c.onnx", quantize="auto", calibration=_calib((1, 12, 12)))
    assert len(seen) == 1
    assert _fp32_weighted(tmp_path / "c.onnx") == set(seen)  # only the depthwise conv kept float weights
    assert any("DepthwiseConv: measured slower in int8" in line for line in rep.fp32_nodes)
    assert rep.agreement >= 0.75


def test_kinds_are_timed_in_both_precisions_in_the_whole_model(tmp_path):
    torch.manual_seed(0)
    net, x = DepthwiseNet().eval(), torch.randn(1, 1, 12, 12)
    rep = export(net, x, tmp_path / "m.onnx")
    float_model = onnx.shape_inference.infer_shapes(onnx.load(rep.path))
    kinds = int8.node_kinds(float_model)
    assert sorted(set(kinds[n.name] for n in float_model.graph.node if n.op_type in int8.COMPUTE)) == \
        ["Conv", "DepthwiseConv", "Gemm"]
    timings = int8.time_kinds(float_model, float_model, kinds, {float_model.graph.input[0].name: x.numpy()},
                              rounds=3)
    assert set(timings) == {"Conv", "DepthwiseConv", "Gemm"}
    assert all(t.fp32_ms > 0 and t.int8_ms > 0 for t in timings.values())


# ---- calibration files ---------------------------------------------------------------------------------
def test_calibration_files_load_safely(tmp_path):
    x = torch.randn(1, 1, 8, 8)
    torch.save(torch.randn(20, 1, 8, 8), tmp_path / "c.pt")
    assert [len(b) for b in calibration.load(tmp_path / "c.pt", x)] == [8, 8, 4]
    np.savez(tmp_path / "c.npz", x=np.zeros((3, 1, 8, 8)))
    got = calibration.load(str(tmp_path / "c.npz"), x)
    assert len(got) == 1 and got[0].dtype == torch.float32 and got[0].shape == (3, 1, 8, 8)
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Path("x")))  # a pickle that is no tensor file
    with pytest.raises(calibration.CalibrationError, match="without running code"):
        calibration.load(tmp_path / "evil.pt", x)
    np.save(tmp_path / "obj.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(calibration.CalibrationError, match="without running code"):
        calibration.load(tmp_path / "obj.npy", x)
    with pytest.raises(calibration.CalibrationError, match="not found"):
        calibration.load(tmp_path / "missing.pt", x)


def test_calibration_from_images_and_a_factory(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 60 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (batch,) = calibration.load(folder, torch.randn(1, 1, 8, 8))
    assert batch.shape == (3, 1, 8, 8) and float(batch.max()) == pytest.approx(120 / 255)
    (tmp_path / "data.py").write_text("import torch\ndef make():\n    return [torch.ones(2, 4)] * 3\n")
    got = calibration.load(f"{tmp_path / 'data.py'}:make", torch.randn(1, 4))
    assert len(got) == 3 and got[0].shape == (2, 4)
    with pytest.raises(calibration.CalibrationError, match="no function 'nope'"):
        calibration.load(f"{tmp_path / 'data.py'}:nope", torch.randn(1, 4))


# ---- the command line ----------------------------------------------------------------------------------
NET = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


def build():
    return Net(), torch.randn(1, 1, 12, 12)
'''


@pytest.mark.skipif(SURGEON is None, reason="the surgeon console script is not installed")
def test_cli_int8_with_calibration_through_the_console_script(tmp_path):
    from surgeon.cli import main

    (tmp_path / "net.py").write_text(NET)
    assert main(["shrink", f"{tmp_path / 'net.py'}:build", "--target", "0.5", "--out", str(tmp_path / "small.pt"),
                 "--quiet"]) == 0
    torch.save(torch.randn(24, 1, 12, 12), tmp_path / "calib.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def cli(*argv):
        return subprocess.run([SURGEON, *map(str, argv)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)

    done = cli("export", "small.pt", "--onnx", "s.onnx", "--int8", "--calibration", "calib.pt")
    assert done.returncode == 0, done.stderr
    assert "static int8: top-1 agreement with PyTorch" in done.stdout and "held-out calibration" in done.stdout
    assert any(n.op_type == "DequantizeLinear" for n in onnx.load(str(tmp_path / "s.onnx")).graph.node)
    refused = cli("export", "small.pt", "--onnx", "t.onnx", "--int8")  # a conv net without calibration
    assert refused.returncode == 1 and "--calibration" in refused.stderr and not (tmp_path / "t.onnx").exists()
