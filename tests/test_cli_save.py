"""``surgeon shrink --out``: the shrunk model saved without pickle (a safetensors checkpoint that
rebuilds itself from its factory, or a save_pretrained folder), reloaded by a new process through
the installed console script, and written whole or not at all."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import surgeon.checkpoint
from surgeon.cli import main

SURGEON = shutil.which("surgeon")
needs_script = pytest.mark.skipif(SURGEON is None, reason="the surgeon console script is not installed")

MYNET = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=WIDTH):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def build():
    return Net(), torch.randn(1, 3, 32, 32)
'''

TIED = '''
import torch
from torch import nn


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 50, bias=False)
        self.head.weight = self.emb.weight  # tied, as language models do

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(h + self.body(h))


def build():
    return Tied(), torch.randint(0, 50, (2, 8))
'''


def surgeon_cli(cwd: Path, *argv) -> subprocess.CompletedProcess:
    """The installed console script, in a fresh process, without PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([SURGEON, *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def _write_mynet(folder: Path, width: int = 64) -> Path:
    path = folder / "mynet.py"
    path.write_text(MYNET.replace("WIDTH", str(width)))
    return path


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(f"_test_{path.stem}_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith((".part", ".old")))


# ---- (a) a file.py:FUNCTION model, saved, then exported by another process ----------------------------
@needs_script
def test_shrink_out_then_export_in_a_new_process(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _write_mynet(tmp_path)
    done = surgeon_cli(tmp_path, "shrink", "mynet.py:build", "--target", "0.5", "--out", "small.pt")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "small.pt").read_bytes()[8:9] == b"{"  # safetensors, not a pickle
    done = surgeon_cli(tmp_path, "export", "small.pt", "--onnx", "small.onnx")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "small.onnx").is_file() and _leftovers(tmp_path) == []

    model, example = surgeon.checkpoint.load(tmp_path / "small.pt")
    assert example.shape == (1, 3, 32, 32)
    dense, _ = _import(tmp_path / "mynet.py").build()
    assert _n_params(model) < _n_params(dense)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    assert want.std() > 1e-3  # a near-constant output would make any comparison pass
    sess = ort.InferenceSession(str(tmp_path / "small.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    assert ((got - want).norm() / want.norm()).item() < 1e-4


@needs_script
def test_inspect_a_checkpoint_and_shrink_it_again(tmp_path):
    _write_mynet(tmp_path)
    assert surgeon_cli(tmp_path, "shrink", "mynet.py:build", "--out", "small.pt", "--quiet").returncode == 0
    done = surgeon_cli(tmp_path, "inspect", "small.pt", "--quiet")
    assert done.returncode == 0 and "small.pt (Net)" in done.stdout, done.stderr
    done = surgeon_cli(tmp_path, "shrink", "small.pt", "--target", "0.5", "--out", "smaller.pt", "--quiet")
    assert done.returncode == 0, done.stderr
    saved = surgeon.checkpoint.read(tmp_path / "smaller.pt")
    assert saved.spec == f"{tmp_path / 'mynet.py'}:build" and len(saved.plans) == 2  # replayed in order
    small, _ = surgeon.checkpoint.load(tmp_path / "small.pt")
    smaller, _ = surgeon.checkpoint.load(tmp_path / "smaller.pt")
    assert _n_params(smaller) < _n_params(small)


def test_tied_weights_are_stored_once_and_stay_tied(capsys, tmp_path):
    (tmp_path / "tied.py").write_text(TIED)
    code = main(["shrink", f"{tmp_path / 'tied.py'}:build", "--target", "0.6", "--out", str(tmp_path / "t.pt")])
    assert code == 0, capsys.readouterr().err
    assert surgeon.checkpoint.read(tmp_path / "t.pt").aliases == {"head.weight": "emb.weight"}
    model, ids = surgeon.checkpoint.load(tmp_path / "t.pt")
    assert model.head.weight is model.emb.weight and model.emb.weight.shape[1] < 32
    with torch.no_grad():
        assert model(ids).std() > 1e-3


def test_a_changed_factory_or_a_foreign_file_is_refused(capsys, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    factory = _write_mynet(tmp_path)
    assert main(["shrink", f"{factory}:build", "--out", str(tmp_path / "small.pt"), "--quiet"]) == 0
    _write_mynet(tmp_path, width=48)  # the factory now builds another model
    capsys.readouterr()
    assert main(["export", str(tmp_path / "small.pt"), "--onnx", str(tmp_path / "s.onnx")]) == 2
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "factory changed since the file was saved" in err
    with pytest.raises(surgeon.checkpoint.CheckpointError, match="does not fit the model"):
        surgeon.checkpoint.load(tmp_path / "small.pt")
    safetensors_torch.save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    assert main(["inspect", str(tmp_path / "plain.safetensors")]) == 2
    assert "without a surgeon factory spec" in capsys.readouterr().err


def test_out_needs_a_factory(capsys, tmp_path):
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)), tmp_path / "m.pt")
    code = main(["shrink", str(tmp_path / "m.pt"), "--input", "1,4", "--trust-pickle", "--out", str(tmp_path / "s.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "no factory to rebuild it from" in err and "file.py:FUNCTION" in err
    assert "planning" not in err and not (tmp_path / "s.pt").exists()  # refused before any work
    with pytest.raises(surgeon.checkpoint.CheckpointError, match="file.py:FUNCTION"):
        surgeon.checkpoint.save(torch.nn.Linear(2, 2), [], "m.pt", tmp_path / "x.pt")


# ---- (b) a Hugging Face model: a save_pretrained folder -------------------------------------------------
def _tiny_llama(folder: Path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=128, vocab_size=96,
                                      max_position_embeddings=64, architectures=["LlamaForCausalLM"])
    config.save_pretrained(folder)
    return transformers, config


FREE_BERT = '''
import torch
from transformers import BertConfig, BertModel


def build():
    config = BertConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=32)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    return BertModel(config).eval(), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
'''


def test_free_widths_of_a_hf_model_round_trip_through_a_checkpoint(tmp_path):
    # uniform=False cuts heads per layer, which BERT's config cannot say: the warning points
    # to surgeon.checkpoint.save, and doing what it says gives back the same model, no pickle
    pytest.importorskip("transformers")
    (tmp_path / "bert.py").write_text(FREE_BERT)
    model, x = _import(tmp_path / "bert.py").build()
    with pytest.warns(UserWarning, match=r"surgeon\.checkpoint\.save\(small, plan, 'file\.py:FUNCTION'"):
        small = surgeon.shrink(model, x, target=0.5, uniform=False)
    plan = surgeon.plan(model, x, target=0.5, uniform=False)
    heads = [layer.attention.self.query.out_features for layer in small.encoder.layer]
    assert min(heads) < 64  # some heads are gone
    surgeon.checkpoint.save(small, plan, str(tmp_path / "bert.py:build"), tmp_path / "free.pt")
    back, x2 = surgeon.checkpoint.load(tmp_path / "free.pt")
    assert [layer.attention.self.query.out_features for layer in back.encoder.layer] == heads
    out, ref = back(**x2).last_hidden_state, small(**x2).last_hidden_state
    assert ref.std() > 1e-3 and torch.allclose(out, ref, atol=1e-5)
    assert _leftovers(tmp_path) == []


@needs_script
def test_shrink_hf_out_folder_reloads_with_from_pretrained(tmp_path):
    transformers, config = _tiny_llama(tmp_path / "tiny")
    done = surgeon_cli(tmp_path, "shrink", "hf:tiny", "--target", "0.5", "--out", "outdir/")
    assert done.returncode == 0, done.stderr
    small, info = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "outdir", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    dense = transformers.LlamaForCausalLM(config)
    assert _n_params(small) < _n_params(dense)
    assert small.config.use_cache is True  # the value surgeon turned off for tracing is restored
    assert _leftovers(tmp_path) == []
    again = surgeon_cli(tmp_path, "shrink", "hf:tiny", "--target", "0.7", "--out", "outdir", "--quiet")
    assert again.returncode == 0, again.stderr  # a folder save_pretrained wrote is replaced whole
    assert _n_params(transformers.LlamaForCausalLM.from_pretrained(tmp_path / "outdir")) > _n_params(small)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("out,says", [("small.pt", "saved with save_pretrained into a folder"),
                                      ("notes", "holds files save_pretrained does not write"),
                                      ("tiny", "the folder the model was read from")])
def test_hf_out_must_be_a_new_or_model_folder(capsys, tmp_path, out, says):
    _tiny_llama(tmp_path / "tiny")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    code = main(["shrink", f"hf:{tmp_path / 'tiny'}", "--out", str(tmp_path / out)])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "planning" not in err, err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


# ---- (c) nothing is left behind by a failed save ---------------------------------------------------------
def test_a_failure_mid_save_leaves_no_file(capsys, tmp_path, monkeypatch):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    factory = _write_mynet(tmp_path)
    (tmp_path / "old.pt").write_bytes(b"the previous result")

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors_torch, "save_file", half_written)
    for name in ("small.pt", "old.pt"):
        code = main(["shrink", f"{factory}:build", "--out", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert code == 1 and "No space left on device" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mynet.py", "old.pt"]
    assert (tmp_path / "old.pt").read_bytes() == b"the previous result"


def test_a_failure_in_save_pretrained_leaves_no_folder(capsys, tmp_path, monkeypatch):
    transformers, _ = _tiny_llama(tmp_path / "tiny")

    def half_written(self, folder, *args, **kwargs):
        (Path(folder) / "config.json").write_text("{}")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", half_written)
    code = main(["shrink", f"hf:{tmp_path / 'tiny'}", "--out", str(tmp_path / "outdir")])
    assert code == 1 and "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
