"""The ``surgeon`` command line: every subcommand, --json, exit codes, and bad specs whose
messages say what to fix."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

import surgeon
import surgeon.checkpoint
from surgeon.cli import build_parser, main, shrink_options
from surgeon.graph.cost import METRICS

ROOT = Path(__file__).resolve().parents[1]

FACTORY = '''
import torch
from torch import nn


def make():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 10))
    return model, torch.randn(1, 3, 32, 32)


def model_only():
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))


def broken():
    raise RuntimeError("weights file missing")


def not_a_model():
    return 42
'''


@pytest.fixture
def factory(tmp_path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(FACTORY)
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- inspect -------------------------------------------------------------------------------------
def test_inspect_prints_the_groups_table(capsys, factory):
    code, out, err = run(capsys, "inspect", f"{factory}:make")
    assert code == 0, err
    lines = out.splitlines()
    assert "groups" in lines[0] and "prunable" in lines[0]
    assert lines[1].split() == ["id", "kind", "units", "FLOPs", "params", "status"]
    assert any("kept whole: model output" in line for line in lines)
    assert "surgeon: loading" in err and "tracing" in err  # progress goes to stderr


def test_inspect_json(capsys, factory):
    code, out, _ = run(capsys, "inspect", f"{factory}:make", "--json")
    assert code == 0
    data = json.loads(out)
    model, x = _load_make(factory)
    groups = surgeon.analyze(model, x).groups
    assert len(data["groups"]) == len(groups) and data["prunable"] == sum(g.prunable for g in groups)
    assert data["input"] == [1, 3, 32, 32] and data["capture"] == "fx"
    assert all(0 <= g["flops_share"] <= 1 for g in data["groups"])
    assert {g["reason"] for g in data["groups"] if not g["prunable"]} >= {"model output"}


def _load_make(factory: Path):
    from surgeon.cli import load_spec

    loaded = load_spec(f"{factory}:make")
    return loaded.model, loaded.example_input


def test_inspect_torchvision_with_input_shape_and_viz(capsys, tmp_path):
    pytest.importorskip("torchvision")
    code, out, err = run(capsys, "inspect", "torchvision:resnet18", "--input", "1,3,64,64", "--json",
                         "--viz", tmp_path / "g.dot")
    assert code == 0, err
    data = json.loads(out)
    assert data["input"] == [1, 3, 64, 64] and data["model"] == "ResNet"
    assert (tmp_path / "g.dot").read_text().startswith("digraph")


def test_inspect_timm(capsys):
    pytest.importorskip("timm")
    code, out, err = run(capsys, "inspect", "timm:convnext_atto", "--input", "1,3,64,64", "--json", "--quiet")
    assert code == 0, err
    assert json.loads(out)["prunable"] > 0 and err == ""


def test_inspect_hf_config_folder_and_file(capsys, tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   architectures=["LlamaForCausalLM"])
    cfg.save_pretrained(tmp_path / "tiny")
    code, out, err = run(capsys, "inspect", f"hf:{tmp_path / 'tiny'}", "--json", "--input", "1,8")
    assert code == 0, err
    data = json.loads(out)
    assert data["model"] == "LlamaForCausalLM" and data["input"] == {"input_ids": [1, 8]}
    assert data["prunable"] >= 1
    code, out, err = run(capsys, "inspect", f"hf:{tmp_path / 'tiny' / 'config.json'}", "--json")
    assert code == 0, err
    assert json.loads(out)["input"]["input_ids"][0] == 1


# ---- shrink and export -----------------------------------------------------------------------------
def test_shrink_writes_model_plan_onnx_report_and_picture(capsys, factory, tmp_path):
    files = {k: tmp_path / f"small.{ext}" for k, ext in
             (("out", "pt"), ("plan", "json"), ("onnx", "onnx"), ("report", "html"), ("viz", "html"))}
    files["viz"] = tmp_path / "groups.html"
    code, out, err = run(capsys, "shrink", f"{factory}:make", "--target", "0.5", "--round-to", "4", "--json",
                         *[a for k, v in files.items() for a in (f"--{k}", v)])
    assert code == 0, err
    data = json.loads(out)
    assert abs(data["flops_ratio"] - 0.5) <= 0.01 and data["params_after"] < data["params_before"]
    assert set(data["files"]) == set(files) and all(p.exists() for p in files.values())
    assert data["latency"]["runtime"] == "onnxruntime CPU" and data["latency"]["after_ms"] > 0
    model, x = _load_make(factory)
    small, _ = surgeon.checkpoint.load(files["out"])
    plan = surgeon.Plan.load(files["plan"])
    again = surgeon.apply(model, plan)
    assert [p.shape for p in again.parameters()] == [p.shape for p in small.parameters()]
    assert all(w % 4 == 0 for w in (small[0].out_channels, small[3].out_channels))
    sess = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), small(x), atol=1e-4)
    report = files["report"].read_text()
    assert "Before and after" in report and "Decisions per group" in report and "<svg class=\"widths\"" in report
    assert '"decision":{' in files["viz"].read_text()
    for step in ("loading", "planning and cutting", "exporting", "measuring", "writing"):
        assert f"surgeon: {step}" in err


def test_shrink_human_output_and_torch_latency(capsys, factory, tmp_path):
    code, out, err = run(capsys, "shrink", f"{factory}:model_only", "--input", "2,8", "--metric", "params",
                         "--target", "0.6", "--report", tmp_path / "r.html")
    assert code == 0, err
    assert out.startswith(f"{factory}:model_only: FLOPs") and "latency (torch CPU" in out
    assert "torch.save" in (tmp_path / "r.html").read_text()


def test_export_a_pickled_model_only_with_trust_pickle(capsys, factory, tmp_path):
    model, _ = _load_make(factory)
    torch.save(model, tmp_path / "m.pt")
    code, out, err = run(capsys, "export", tmp_path / "m.pt", "--input", "1,3,32,32", "--onnx", tmp_path / "m.onnx")
    assert code == 2 and "--trust-pickle" in err and "weights_only=True" in err and not (tmp_path / "m.onnx").exists()
    code, out, err = run(capsys, "export", tmp_path / "m.pt", "--input", "1,3,32,32", "--onnx",
                         tmp_path / "m.onnx", "--json", "--trust-pickle")
    assert code == 0, err
    assert "warning: --trust-pickle" in err and "runs any code" in err
    data = json.loads(out)
    assert data["path"] == str(tmp_path / "m.onnx") and data["max_rel_error"] < 1e-4
    assert data["weights"] <= sum(p.numel() for p in model.parameters())
    code, out, err = run(capsys, "export", f"{factory}:make", "--onnx", tmp_path / "f.onnx")
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'f.onnx'}")


@pytest.mark.parametrize("flag,option", [("--fp16", "dtype"), ("--int8", "quantize")])
def test_export_precision_flags(capsys, factory, tmp_path, flag, option):
    from surgeon.exporters.onnx import export

    extra = []
    if flag == "--int8":  # a conv net: without calibration dynamic int8 would be slower, so it is refused
        code, out, err = run(capsys, "export", f"{factory}:make", "--onnx", tmp_path / "q.onnx", flag)
        assert code == 1 and "--calibration" in err and not (tmp_path / "q.onnx").exists()
        torch.save(torch.randn(16, 3, 32, 32), tmp_path / "calib.pt")
        extra = ["--calibration", tmp_path / "calib.pt"]
    code, out, err = run(capsys, "export", f"{factory}:make", "--onnx", tmp_path / "q.onnx", flag, "--json", *extra)
    if option in inspect.signature(export).parameters:
        assert code == 0, err
        data = json.loads(out)
        assert data.get("dtype") == "fp16" if flag == "--fp16" else data.get("quantize") == "static"
    else:
        assert code == 2 and "not supported yet" in err and not (tmp_path / "q.onnx").exists()


# ---- bad usage (2) and failures (1) ------------------------------------------------------------------
@pytest.mark.parametrize("spec,code,says", [
    ("foo:bar", 2, ["unknown model spec prefix 'foo:'", "torchvision:NAME", "file.py:FUNCTION"]),
    ("missing.py:make", 2, ["missing.py not found", "existing Python file"]),
    ("missing.pt", 2, ["missing.pt not found", "surgeon shrink SPEC --out FILE"]),
    ("{factory}:nope", 2, ["has no function 'nope'", "make", "model_only"]),
    ("{factory}:broken", 1, ["raised RuntimeError: weights file missing", "fix the factory"]),
    ("{factory}:not_a_model", 1, ["returned int", "return an nn.Module or (model, example_input)"]),
    ("{factory}", 2, ["name the function that builds the model"]),
    ("resnet50", 2, ["is not a model spec", "torchvision:NAME"]),
    ("torchvision:resnet5O", 2, ["torchvision has no model 'resnet5O'", "did you mean resnet50"]),
    ("hf:/no/such/folder", 2, ["does not exist", "never downloads"]),
    ("torchvision:", 2, ["names no model"]),
])
def test_bad_specs_say_what_to_fix(capsys, factory, spec, code, says):
    got, out, err = run(capsys, "inspect", spec.format(factory=factory))
    assert got == code, err
    assert out == ""
    for s in says:
        assert s in err


def test_state_dict_is_not_a_model(capsys, tmp_path):
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "sd.pt")
    code, _, err = run(capsys, "export", tmp_path / "sd.pt", "--onnx", tmp_path / "x.onnx")
    assert code == 2 and "holds a state_dict, not a model" in err and "file.py:FUNCTION" in err


@pytest.mark.parametrize("argv,says", [
    (["shrink", "{f}:make", "--input", "1,x"], "is not a shape"),
    (["shrink", "{f}:make", "--target", "1.5"], "must be in (0, 1]"),
    (["shrink", "{f}:make", "--out", "/no/such/dir/s.pt"], "does not exist; create it first"),
    (["shrink", "{f}:make", "--ignore", "nope"], "--ignore names a module"),
    (["shrink", "{f}:make", "--bogus"], "unrecognized arguments: --bogus"),
    (["shrink", "{f}:make", "--metric", "watts"], "invalid choice: 'watts'"),
    (["export", "{f}:make"], "the following arguments are required: --onnx"),
    (["export", "{f}:make", "--onnx", "a.onnx", "--fp16", "--int8"], "choose one of --fp16 and --int8"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_flags_exit_2(capsys, factory, argv, says):
    code, out, err = run(capsys, *[a.format(f=factory) for a in argv])
    assert code == 2 and out == "" and says in err


def test_latency_metric_until_the_engine_has_it(capsys, factory):
    code, _, err = run(capsys, "shrink", f"{factory}:make", "--metric", "latency")
    if "latency" not in METRICS:
        assert code == 2 and "--metric latency is not supported yet" in err and "flops" in err


def test_model_that_rejects_its_input_fails_with_1(capsys, factory):
    code, out, err = run(capsys, "shrink", f"{factory}:model_only", "--input", "1,5")
    assert code == 1 and out == ""
    assert "fails on the example input" in err and "SURGEON_DEBUG" in err


# ---- files are read without running code from them ------------------------------------------------
EVIL = """
import builtins


class Evil:
    def __reduce__(self):
        return (builtins.exec, ("open({marker!r}, 'w').close()",))
"""


def _evil_pt(tmp_path: Path) -> tuple[Path, Path]:
    """A .pt whose unpickling creates ``marker``: proof that code from the file ran."""
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    scope: dict = {}
    exec(EVIL.format(marker=str(marker)), scope)
    torch.save({"model": scope["Evil"]()}, path)
    return path, marker


@pytest.mark.parametrize("argv", [["inspect", "{evil}"], ["shrink", "{evil}", "--out", "{tmp}/s.pt"],
                                  ["export", "{evil}", "--onnx", "{tmp}/e.onnx"],
                                  ["shrink", "{factory}:make", "--compensate", "--data", "{evil}"]])
def test_a_pickle_that_runs_code_is_refused(capsys, factory, tmp_path, argv):
    evil, marker = _evil_pt(tmp_path)
    code, out, err = run(capsys, *[a.format(evil=evil, tmp=tmp_path, factory=factory) for a in argv])
    assert not marker.exists(), "code from the .pt file ran"
    assert code == 2 and out == "", err
    assert f"{evil} holds pickled Python objects" in err and "runs code from the file" in err
    assert "--trust-pickle" in err and ("--out small.pt" in err or "torch.save" in err)
    assert not list(tmp_path.glob("s.pt*")) and not (tmp_path / "e.onnx").exists()


def test_trust_pickle_is_loud(capsys, tmp_path):
    evil, marker = _evil_pt(tmp_path)
    code, _, err = run(capsys, "inspect", evil, "--trust-pickle", "--quiet")
    assert marker.exists() and "warning: --trust-pickle" in err and "runs any code" in err
    assert code == 2 and "not a model" in err  # what it unpickled to is no model
    code, out, _ = run(capsys, "inspect", "--help")
    assert code == 0 and "RUNS CODE FROM THE FILE" in " ".join(out.split())


def test_a_damaged_pt_is_a_failure_not_a_pickle_warning(capsys, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02junk" * 10)
    code, _, err = run(capsys, "inspect", tmp_path / "junk.pt")
    assert code == 1 and "cannot read SPEC" in err and "--trust-pickle" not in err


# ---- every shrink option of the API ------------------------------------------------------------------
def _args(*argv):
    return build_parser().parse_args(["shrink", "x.py:f", *argv])


def test_shrink_options_are_the_keyword_arguments_of_surgeon_shrink():
    opts = shrink_options(_args("--target", "0.4", "--metric", "params", "--criterion", "l1", "--round-to", "0",
                                "--ignore", "a, b", "--min-keep", "2", "--no-uniform", "--layers",
                                "--runtime", "ort-cpu", "--compensate"))
    assert opts == {"target": 0.4, "metric": "params", "criterion": "l1", "round_to": None, "ignore": ["a", "b"],
                    "min_keep": 2, "uniform": False, "layers": True, "runtime": "ort-cpu", "data": None,
                    "compensate": True}
    assert set(opts) <= set(inspect.signature(surgeon.shrink).parameters)
    defaults = shrink_options(_args())
    for k, v in defaults.items():  # the command line's defaults are the API's
        if k not in ("ignore", "data"):
            assert inspect.signature(surgeon.shrink).parameters[k].default == v, k
    assert shrink_options(_args("--min-keep", "0.25"))["min_keep"] == 0.25


def test_cut_reads_every_option_through_shrink_options(capsys, factory, monkeypatch):
    import surgeon.cli as cli

    seen = []
    real = cli.shrink_options
    monkeypatch.setattr(cli, "shrink_options", lambda args: seen.append(args.target) or real(args))
    code, _, err = run(capsys, "shrink", f"{factory}:make", "--target", "0.6", "--quiet")
    assert code == 0 and 0.6 in seen, err


@pytest.mark.parametrize("kind", ["pairs.pt", "dict.pt", "xy.npz"])
def test_data_aware_criterion_from_a_data_file(capsys, factory, tmp_path, kind):
    import numpy as np

    x, y = torch.randn(20, 3, 32, 32), torch.randint(0, 10, (20,))
    path = tmp_path / kind
    if kind == "pairs.pt":
        torch.save([(x[:10], y[:10]), (x[10:], y[10:])], path)
    elif kind == "dict.pt":
        torch.save({"x": x, "y": y}, path)
    else:
        np.savez(path, x=x.double().numpy(), y=y.numpy())  # float64 arrays become float32 batches
    code, out, err = run(capsys, "shrink", f"{factory}:make", "--criterion", "taylor", "--data", path,
                         "--plan", tmp_path / "p.json", "--json", "--quiet")
    assert code == 0, err
    assert abs(json.loads(out)["flops_ratio"] - 0.5) <= 0.01
    assert surgeon.Plan.load(tmp_path / "p.json").criterion == "taylor"


def test_compensate_refits_the_kept_weights(capsys, factory, tmp_path):
    torch.save(torch.randn(16, 3, 32, 32), tmp_path / "x.pt")  # one tensor: batches of 8
    for name, extra in (("plain", []), ("fit", ["--compensate", "--data", tmp_path / "x.pt"])):
        code, _, err = run(capsys, "shrink", f"{factory}:make", "--round-to", "0", "--out", tmp_path / f"{name}.pt",
                           "--quiet", *extra)
        assert code == 0, err
    plain, _ = surgeon.checkpoint.load(tmp_path / "plain.pt")
    fit, _ = surgeon.checkpoint.load(tmp_path / "fit.pt")
    shapes = [p.shape for p in plain.parameters()]
    assert shapes == [p.shape for p in fit.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), fit.parameters()))


@pytest.mark.parametrize("argv,says", [
    (["--criterion", "taylor"], "scores units on calibration data: pass --data FILE"),
    (["--criterion", "fisher", "--data", "{tmp}/x.pt"], "needs targets"),
    (["--data", "{tmp}/x.pt"], "it would be ignored"),
    (["--compensate", "--data", "{tmp}/none.pt"], "--data {tmp}/none.pt not found"),
    (["--compensate", "--data", "{tmp}/obj.npy"], "cannot be read without pickle"),
    (["--compensate", "--data", "{tmp}/scalar.pt"], "holds a Tensor"),
    (["--criterion", "nope"], "unknown criterion; use one of"),
    (["--metric", "latency"], "add --runtime ort-cpu or --runtime torch-cuda"),
    (["--runtime", "tpu"], "invalid choice: 'tpu'"),
    (["--min-keep", "1.5"], "not a fraction in [0, 1) or a unit count >= 1"),
    (["--min-keep", "-1"], "not a fraction in [0, 1) or a unit count >= 1"),
    (["--layers", "--no-uniform", "--uniform", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_shrink_options_exit_2_before_any_work(capsys, factory, tmp_path, argv, says):
    import numpy as np

    torch.save(torch.randn(4, 3, 32, 32), tmp_path / "x.pt")
    torch.save(torch.tensor(1.0), tmp_path / "scalar.pt")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, out, err = run(capsys, "shrink", f"{factory}:make", *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and out == "", err
    assert says.format(tmp=tmp_path) in err and "surgeon: loading" not in err


def test_runtime_ort_cpu_times_the_layers(capsys, factory):
    pytest.importorskip("onnxruntime")
    code, out, err = run(capsys, "shrink", f"{factory}:make", "--runtime", "ort-cpu", "--json", "--quiet")
    assert code == 0, err
    assert abs(json.loads(out)["flops_ratio"] - 0.5) <= 0.01


def test_runtime_torch_cuda_without_a_gpu(capsys, factory):
    code, _, err = run(capsys, "shrink", f"{factory}:make", "--runtime", "torch-cuda")
    if not torch.cuda.is_available():
        assert code == 2 and "needs a CUDA GPU" in err and "ort-cpu" in err


def test_inspect_layers_and_uniform_flags(capsys, factory):
    code, out, err = run(capsys, "inspect", f"{factory}:make", "--layers", "--no-uniform", "--json", "--quiet")
    assert code == 0, err
    assert json.loads(out)["prunable"] >= 1


# ---- entry points ----------------------------------------------------------------------------------
def test_python_m_surgeon_json_on_stdout_progress_on_stderr(factory, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "surgeon", "inspect", f"{factory}:make", "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["spec"] == f"{factory}:make"
    assert "surgeon: loading" in done.stderr
    bad = subprocess.run([sys.executable, "-m", "surgeon", "inspect", "nope:x"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and "unknown model spec prefix" in bad.stderr
    helped = subprocess.run([sys.executable, "-m", "surgeon", "--help"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert helped.returncode == 0 and "inspect" in helped.stdout and "shrink" in helped.stdout


def test_console_script_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"surgeon": "surgeon.cli:main"}
    installed = Path(sys.executable).with_name("surgeon")
    if installed.exists():  # after `pip install -e .`
        done = subprocess.run([str(installed), "--help"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "shrink" in done.stdout


@pytest.mark.slow
def test_acceptance_resnet50_shrink_onnx_report(tmp_path):
    """README's command: shrink ResNet-50 to half its FLOPs, export ONNX, write the report."""
    pytest.importorskip("torchvision")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "surgeon", "shrink", "torchvision:resnet50", "--target", "0.5",
                           "--onnx", "r50.onnx", "--report", "report.html", "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert abs(data["flops_ratio"] - 0.5) <= 0.01
    assert (tmp_path / "r50.onnx").stat().st_size == data["onnx"]["file_bytes"]
    assert data["latency"]["runtime"] == "onnxruntime CPU"
    assert "Layer widths" in (tmp_path / "report.html").read_text()
