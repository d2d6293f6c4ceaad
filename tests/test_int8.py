"""int8 that pays off: the mode chosen from the model and the data, calibration read without pickle,
mixed precision by measurement, and the CLI's ``--int8 --calibration`` through the console script."""

from __future__ import annotations

import os
import pickle
import re
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
from surgeon.exporters import _edge, calibration, int8, int8_paths  # noqa: E402
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
    return _fp32_weighted_model(onnx.load(str(path)))


def _fp32_weighted_model(model) -> set[str]:
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
        assert all(len(v) == 1 for v in feed.values())  # timed at one sample, as on the edge
        seen.update({n: k for n, k in kinds.items() if k == "DepthwiseConv"})
        return {"Conv": int8.NodeTiming(2.0, 1.0), "DepthwiseConv": int8.NodeTiming(1.0, 1.5),
                "Gemm": int8.NodeTiming(2.0, 1.0)}

    monkeypatch.setattr(int8, "time_kinds", fake_timings)
    monkeypatch.setattr(int8_paths, "sensitive_nodes", lambda *a, **k: int8_paths.Sensitivity({}, 0.0, 0.0))
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


# ---- where int8 error reaches the output ---------------------------------------------------------------
class BlockNet(nn.Module):
    """ConvNeXt in small: a residual stream that only LayerNorm, GELU and a layer-scale Mul read in fp32."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem, self.dw = nn.Conv2d(3, c, 2, stride=2), nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(c), nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma, self.head = nn.Parameter(torch.full((c,), 0.1)), nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        for _ in range(3):
            y = self.fc2(nn.functional.gelu(self.fc1(self.norm(self.dw(x).permute(0, 2, 3, 1))))) * self.gamma
            x = x + y.permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def test_residual_stream_and_outputs_stay_fp32(tmp_path):
    torch.manual_seed(0)
    net, x = BlockNet().eval(), torch.randn(1, 3, 16, 16)
    float_model = onnx.load(export(net, x, tmp_path / "f.onnx").path)
    glue = int8_paths.float_glue(float_model)
    adds = [n.name for n in float_model.graph.node if n.op_type == "Add" and n.name in glue]
    assert len(adds) >= 3  # the three residual Adds read the layer-scale Mul, which runs fp32
    rep = export(net, x, tmp_path / "q.onnx", quantize="auto", calibration=_calib((3, 16, 16)), mixed_precision=False)
    qdq = onnx.load(rep.path)
    producer = {o: n for n in qdq.graph.node for o in n.output}
    assert all(producer[o.name].op_type != "DequantizeLinear" for o in qdq.graph.output)
    residual = [n for n in qdq.graph.node if n.name in adds]
    assert len(residual) == len(adds)  # the stream may be quantized for the depthwise conv, which reads it in
    rounded = [producer[producer[producer[i].input[0]].input[0]].op_type for n in residual for i in n.input
               if i in producer and producer[i].op_type == "DequantizeLinear"]
    assert "Add" not in rounded and "Mul" not in rounded  # what fp32 computes, the Adds read unrounded
    assert any("Add on an fp32 path" in line for line in rep.fp32_nodes)


def test_fp32_readers_keep_the_relu_the_quantizer_folded(tmp_path):
    float_model, qdq, names = _static_int8(ConvNet(), tmp_path)
    assert sum(n.op_type == "Relu" for n in qdq.graph.node) < 2  # folded into a Quantize whose range starts at 0
    weighted = {n.name for n in float_model.graph.node if n.op_type in int8.COMPUTE}
    edited = int8_paths.float_paths(int8.float_weights(qdq, float_model, weighted), weighted)
    feed = {names[0]: _calib((1, 12, 12), n=1, seed=5)[0].numpy()}
    ref = int8._session(float_model).run(None, feed)[0]
    assert ref.std() > 1e-3
    assert int8_paths.output_error(edited, feed, [ref]) < 1e-6  # all fp32 again, and the ReLUs still act


class TwoReaders(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)
        self.conv3, self.fc = nn.Conv2d(width, width, 1), nn.Linear(width, 10)

    def forward(self, x):
        h = torch.relu(self.conv1(x))  # one ReLU-clamped int8 tensor, read by two convs
        return self.fc((self.conv2(h) + self.conv3(h)).mean((2, 3)))


def _static_int8(net: nn.Module, tmp_path) -> tuple:
    """(the fp32 ONNX model, its static int8 QDQ file, the input names) of ``net`` on 1x1x12x12."""
    torch.manual_seed(0)
    net, x = net.eval(), torch.randn(1, 1, 12, 12)
    src = export(net, x, tmp_path / "f.onnx").path
    names = [onnx.load(src).graph.input[0].name]
    _edge._static(src, str(tmp_path / "q.onnx"), names, [((c,), {}) for c in _calib((1, 12, 12))], False)
    return onnx.load(src), onnx.load(str(tmp_path / "q.onnx")), names


def test_edits_of_edited_files_keep_one_clamp_per_tensor(tmp_path):
    float_model, qdq, names = _static_int8(TwoReaders(), tmp_path)
    conv2 = [n.name for n in float_model.graph.node if n.op_type == "Conv"][1]
    once = int8.float_weights(qdq, float_model, {conv2})  # conv2 reads the clamped fp32 tensor, conv3 its int8 copy
    twice = int8_paths.float_paths(int8.float_weights(once, float_model, {conv2}), {conv2})
    outputs = [o for n in twice.graph.node for o in n.output]
    assert len(outputs) == len(set(outputs)) and sum(n.op_type == "Clip" for n in twice.graph.node) == 1
    onnx.checker.check_model(twice)
    feed = {names[0]: _calib((1, 12, 12), n=1, seed=5)[0].numpy()}
    ref = int8._session(float_model).run(None, feed)[0]
    assert int8_paths.output_error(twice, feed, [ref]) < 0.05


def test_the_node_int8_hurts_most_is_kept_fp32(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                        nn.Linear(256, 10)).eval()
    scale = torch.tensor([300.0, 1.0, 1.0, 1.0])  # one input feature is an outlier: int8 input loses the rest
    with torch.no_grad():
        net[0].weight[:, 0] /= 300.0  # ... which the output needs as much as the outlier
    calib = [torch.randn(16, 4) * scale for _ in range(4)]
    monkeypatch.setattr(int8, "time_kinds", lambda *a, **k: {})  # error only, no timing
    monkeypatch.setattr(int8_paths, "time_cost", lambda *a, **k: 0.01)  # fp32 costs 1% of the time
    first = next(n.name for n in onnx.load(export(net, calib[0][:1], tmp_path / "f.onnx").path).graph.node
                 if n.op_type in int8.COMPUTE)
    rep = export(net, calib[0][:1], tmp_path / "q.onnx", quantize="static", calibration=calib)
    assert first in _fp32_weighted(tmp_path / "q.onnx")
    assert any("int8 error on the calibration data: alone in fp32" in line and first in line
               for line in rep.fp32_nodes)
    note = next(line for line in rep.fp32_nodes if line.startswith("output error on a calibration batch"))
    before, after = (float(v) for v in re.findall(r"(\d\.\de[-+]\d+)", note))
    assert after < before / 2
    assert any("at +1.0% time (measured): kept fp32" in line for line in rep.fp32_nodes)


def test_nodes_are_left_int8_where_their_fp32_time_costs_more_than_their_error(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                        nn.Linear(64, 10)).eval()
    with torch.no_grad():
        net[0].weight[:, 0] /= 300.0
    calib = [torch.randn(16, 4) * torch.tensor([300.0, 1.0, 1.0, 1.0]) for _ in range(4)]
    costs = []

    def dear(qdq, trial, feed, rounds=7):  # each fp32 node adds half the model's time (an int8 chain broken)
        n = len(_fp32_weighted_model(trial))
        costs.append(n)
        return 0.5 * n

    monkeypatch.setattr(int8, "time_kinds", lambda *a, **k: {})
    monkeypatch.setattr(int8_paths, "time_cost", dear)
    monkeypatch.setattr(int8_paths, "GAIN", 0.0)  # every node that cuts the error at all is shortlisted
    monkeypatch.setattr(int8_paths, "WORTH", 0.0)
    rep = export(net, calib[0][:1], tmp_path / "q.onnx", quantize="static", calibration=calib)
    assert _fp32_weighted(tmp_path / "q.onnx") == set()  # none pays for its time
    assert costs and costs[-1] == 1 and all(a > b for a, b in zip(costs, costs[1:]))  # the better half, in turn
    assert sum("less than 3x the time, left int8" in line for line in rep.fp32_nodes) == len(costs)


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
    int8_nodes = any(n.op_type == "DequantizeLinear" for n in onnx.load(str(tmp_path / "s.onnx")).graph.node)
    assert int8_nodes or done.stdout.count("measured slower in int8") >= 2  # a tiny net may time faster in fp32
    refused = cli("export", "small.pt", "--onnx", "t.onnx", "--int8")  # a conv net without calibration
    assert refused.returncode == 1 and "--calibration" in refused.stderr and not (tmp_path / "t.onnx").exists()
