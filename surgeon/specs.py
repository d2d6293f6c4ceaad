"""Model specs and calibration files, as the command line names them, loaded without running code
from any file: ``torchvision:NAME``, ``timm:NAME``, ``hf:PATH``, ``file.py:FUNCTION``, a checkpoint
written by ``surgeon shrink --out`` (:mod:`surgeon.checkpoint`), or a pickled model only with
``trust_pickle=True``."""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import os
import pickle
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["load_spec", "load_data", "load_checkpoint", "parse_shape", "Loaded", "UsageError", "Failure"]

PREFIXES = ("torchvision", "timm", "hf")
SPEC_HELP = ("torchvision:NAME, timm:NAME, hf:PATH (config file or folder), file.py:FUNCTION, "
             "or a file written by surgeon shrink --out")
SAFE_FORMATS = ("save the model with `surgeon shrink SPEC --out small.pt` (safetensors weights plus the plan, "
                "rebuilt from its torchvision:NAME, timm:NAME or file.py:FUNCTION factory), or pass a "
                "file.py:FUNCTION spec whose function builds the model")
SAFE_DATA = ("save plain tensors with torch.save (a tensor of inputs, a list of tensors or of (inputs, targets) "
             "pairs), or numeric arrays as .npy / .npz (arrays x and y)")
LOSS_CRITERIA = ("taylor", "fisher")  # they differentiate a loss, so each batch needs its targets
DATA_BATCH = 8  # a calibration tensor in one piece is split into batches of this many samples


class UsageError(Exception):
    """The command line is wrong: exit code 2, with what to change."""


class Failure(Exception):
    """The work itself failed: exit code 1."""


# ---- model specs -----------------------------------------------------------------------------
@dataclass
class Loaded:
    model: nn.Module
    example_input: Any
    spec: str
    factory: str | None = None  # the spec a checkpoint can rebuild the model from (None: it has none)
    plans: tuple = ()  # plans already applied to the factory's model (a checkpoint given as SPEC)
    shape: tuple[int, ...] | None = None  # the --input shape, kept in a checkpoint
    source: Path | None = None  # a Hugging Face model's folder
    restore: dict = field(default_factory=dict)  # config values changed for tracing, restored on save


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``"1x3x224x224"``) -> ``(1, 3, 224, 224)``.

    >>> parse_shape("1,3,224,224"), parse_shape("1x128")
    ((1, 3, 224, 224), (1, 128))
    """
    if not re.fullmatch(r"\s*\d+(\s*[,x]\s*\d+)*\s*", text) or any(int(d) < 1 for d in re.findall(r"\d+", text)):
        raise UsageError(f"--input {text!r} is not a shape; write positive sizes like 1,3,224,224")
    return tuple(int(d) for d in re.findall(r"\d+", text))


def _need(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"this spec needs {module}, which is not installed: pip install {extra}") from exc


def _torchvision(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    tv = _need("torchvision", "torchvision")
    try:
        model = tv.models.get_model(name, weights=None)
    except ValueError as exc:
        close = difflib.get_close_matches(name, tv.models.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise UsageError(f"torchvision has no model '{name}'{hint}") from exc
    size = 224
    with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
        size = int(tv.models.get_model_weights(name).DEFAULT.transforms().crop_size[0])
    return model, (1, 3, size, size)


def _timm(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    timm = _need("timm", "timm")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise UsageError(f"timm has no model '{name}'{hint}")
    model = timm.create_model(name, pretrained=False)
    size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    return model, (1, *size)


def _hf(path: str) -> tuple[nn.Module, dict]:
    """The model a local config describes (random weights) and the config values changed for tracing."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"hf: {path} does not exist; pass a local folder with config.json or a config file "
                         "(surgeon never downloads)")
    if p.is_dir() and not (p / "config.json").exists():
        raise UsageError(f"hf: {path} has no config.json; pass a model folder or a config.json file")
    transformers = _need("transformers", "transformers")
    try:
        config = transformers.AutoConfig.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"hf: cannot read a config from {path}: {exc}") from exc
    restore = {}
    if hasattr(config, "use_cache"):
        restore["use_cache"] = config.use_cache
        config.use_cache = False  # a cache object in the output cannot be exported to ONNX (--onnx)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)
    return model, restore


def _load_factory(file: str, func: str) -> Loaded:
    path = Path(file)
    if not path.is_file():
        raise UsageError(f"{file} not found; SPEC file.py:FUNCTION needs an existing Python file")
    name = f"_surgeon_spec_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that its classes can be found by name (pickle, torch.save in the report)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file; reported with what to fix
        raise Failure(f"importing {file} raised {type(exc).__name__}: {exc}; fix the file") from exc
    factory = getattr(module, func, None)
    if not callable(factory):
        have = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise UsageError(f"{file} has no function '{func}'; define it or name one of: {', '.join(have) or 'none'}")
    try:
        out = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory; reported with what to fix
        raise Failure(f"factory {file}:{func}() raised {type(exc).__name__}: {exc}; fix the factory") from exc
    example = None
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], nn.Module):
        out, example = out
    if not isinstance(out, nn.Module):
        raise Failure(f"factory {file}:{func}() returned {type(out).__name__}; return an nn.Module "
                      "or (model, example_input)")
    return Loaded(out, example, f"{file}:{func}", factory=f"{path.resolve()}:{func}")


def _torch_load(path: Path, trust_pickle: bool, flag: str = "SPEC") -> Any:
    """``torch.load`` that runs no code from the file unless the user passed --trust-pickle."""
    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # no refused class or function: a damaged or foreign file
            why = str(exc).partition("WeightsUnpickler error:")[2].strip().split("\n")[0] or str(exc)[:200]
            raise Failure(f"cannot read {flag} {path} ({why}); is it a torch.save file?") from exc
        instead = SAFE_FORMATS if flag == "SPEC" else SAFE_DATA
        raise UsageError(f"{flag} {path} holds pickled Python objects (such as a whole model from "
                         "torch.save(model)); unpickling them runs code from the file, so surgeon reads .pt "
                         f"files with torch.load(weights_only=True) only. Instead, {instead}. If you "
                         "trust this file, pass --trust-pickle (it runs code from the file)") from exc
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file fails in many ways
        raise Failure(f"cannot read {flag} {path} ({type(exc).__name__}: {exc}); is it a torch.save file?") from exc


def _load_file(file: str, shape: tuple[int, ...] | None, trust_pickle: bool) -> Loaded:
    """A checkpoint written by ``surgeon shrink --out``, or (with --trust-pickle) a pickled model."""
    from . import _ckptfile as checkpoint

    path = Path(file)
    if not path.is_file():
        raise UsageError(f"{file} not found; pass a file written by `surgeon shrink SPEC --out FILE`")
    if checkpoint.is_checkpoint(path):
        try:
            saved = checkpoint.read(path)
            model, example = load_checkpoint(path, input_shape=shape)
        except checkpoint.CheckpointError as exc:
            raise UsageError(str(exc)) from exc
        return Loaded(model, example, file, factory=saved.spec, plans=saved.plans, shape=shape or saved.input_shape)
    obj = _torch_load(path, trust_pickle)
    example = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):
        obj, example = obj["model"], obj.get("example_input")
    if not isinstance(obj, nn.Module):
        what = "a state_dict" if isinstance(obj, dict) else type(obj).__name__
        raise UsageError(f"{file} holds {what}, not a model; surgeon needs the model's code too: write a "
                         "file.py:FUNCTION that builds the model (and loads these weights), or pass a file "
                         "written by `surgeon shrink SPEC --out FILE`")
    return Loaded(obj, example, file)


def _default_input(model: nn.Module, shape: tuple[int, ...] | None) -> Any:
    """Random tokens for a transformers text model, pixels for one that sees images, else randn."""
    config = getattr(model, "config", None)
    main = getattr(model, "main_input_name", None)
    if config is not None and main == "input_ids":
        longest = getattr(config, "max_position_embeddings", 32) or 32
        shape = shape or (1, min(32, longest))
        return {"input_ids": torch.randint(0, getattr(config, "vocab_size", 100), shape)}
    if config is not None and main == "pixel_values":
        size = getattr(config, "image_size", 224)
        size = size[0] if isinstance(size, (tuple, list)) else size
        shape = shape or (1, getattr(config, "num_channels", 3), size, size)
        return {"pixel_values": torch.randn(shape)}
    return torch.randn(shape or (1, 3, 224, 224))


def load_spec(spec: str, shape: tuple[int, ...] | None = None, *, trust_pickle: bool = False) -> Loaded:
    """Build the model a SPEC names and its example input (``shape`` overrides the default).

    A pickled model file is refused unless ``trust_pickle`` (unpickling runs code from the file)."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in PREFIXES:
        if not rest:
            raise UsageError(f"'{spec}' names no model; write {prefix}:NAME")
        if prefix == "hf":
            model, restore = _hf(rest)
            source = Path(rest) if Path(rest).is_dir() else Path(rest).parent
            return Loaded(model.eval(), _default_input(model, shape), spec, source=source, restore=restore)
        model, default = (_torchvision if prefix == "torchvision" else _timm)(rest)
        return Loaded(model.eval(), _default_input(model, shape or default), spec, factory=spec, shape=shape)
    if ".py:" in spec:
        file, _, func = spec.rpartition(":")
        loaded = _load_factory(file, func)
    elif spec.endswith(".py"):
        raise UsageError(f"name the function that builds the model: {spec}:FUNCTION")
    elif spec.endswith((".pt", ".pth", ".safetensors")) or Path(spec).is_file():
        loaded = _load_file(spec, shape, trust_pickle)
    elif sep:
        raise UsageError(f"unknown model spec prefix '{prefix}:' in '{spec}'; use {SPEC_HELP}")
    else:
        raise UsageError(f"'{spec}' is not a model spec; use {SPEC_HELP}")
    if shape is not None or loaded.example_input is None:
        loaded.example_input = _default_input(loaded.model, shape)
    loaded.shape = loaded.shape or shape
    loaded.model.eval()
    return loaded


# ---- calibration data ------------------------------------------------------------------------
def load_data(file: str, trust_pickle: bool = False) -> list:
    """Calibration batches from ``file``: a ``.pt`` (read with weights_only=True) holding a tensor
    (split into batches of 8), a dict with tensors ``x`` and ``y`` (likewise), a list of tensors,
    of ``(x, y)`` pairs or of dicts of keyword arguments; or a ``.npy`` array / ``.npz`` with one
    array or arrays ``x`` and ``y`` (float64 becomes float32, the dtype models use)."""
    import numpy as np

    path = Path(file)
    if not path.is_file():
        raise UsageError(f"--data {file} not found; pass a .pt, .npy or .npz file of calibration inputs")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            obj = _from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: _from_numpy(z[k]) for k in z.files}
            obj = next(iter(arrays.values())) if len(arrays) == 1 else arrays
        else:
            obj = _torch_load(path, trust_pickle, "--data")
    except ValueError as exc:  # numpy: an object array needs pickle, or a damaged file
        raise UsageError(f"--data {file} cannot be read without pickle ({exc}); save plain numeric arrays") from exc
    return _batches(obj, file)


def _from_numpy(array) -> torch.Tensor:
    t = torch.from_numpy(array.copy())
    return t.float() if t.dtype == torch.float64 else t


def _batches(obj: Any, file: str) -> list:
    def tensors(*xs):
        return all(isinstance(x, torch.Tensor) for x in xs)

    if isinstance(obj, torch.Tensor) and obj.dim() > 0 and len(obj):
        return list(obj.split(DATA_BATCH))
    if isinstance(obj, dict) and set(obj) == {"x", "y"} and tensors(*obj.values()) \
            and obj["x"].dim() > 0 and len(obj["x"]) == len(obj["y"]) > 0:
        return list(zip(obj["x"].split(DATA_BATCH), obj["y"].split(DATA_BATCH)))
    if isinstance(obj, (list, tuple)) and obj:
        if all(isinstance(b, torch.Tensor) for b in obj):
            return list(obj)
        if all(isinstance(b, (tuple, list)) and len(b) == 2 and tensors(*b) for b in obj):
            return [tuple(b) for b in obj]
        if all(isinstance(b, dict) and b and tensors(*b.values()) for b in obj):
            return list(obj)
    what = f"a {type(obj).__name__}" + (f" with keys {sorted(obj)[:5]}" if isinstance(obj, dict) else "")
    raise UsageError(f"--data {file} holds {what}; save a tensor of inputs (split into batches of {DATA_BATCH}), "
                     "a dict {'x': inputs, 'y': targets}, or a list of input tensors, (inputs, targets) pairs "
                     "or dicts of keyword arguments (torch.save), or an .npy array / .npz with arrays x and y")


# ---- progress on stderr ------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike, *, input_shape: Sequence[int] | None = None) -> tuple[nn.Module, Any]:
    """Rebuild the model saved in ``path``: call its factory, apply its plans, load its tensors
    (strictly). Returns ``(model, example_input)``, the input from the factory or the saved
    shape (``input_shape`` overrides it), or None when neither gives one."""
    import safetensors.torch

    from .surgery import apply
    from ._ckptfile import CheckpointError, read
    from .errors import SurgeonError

    saved = read(path)
    model, example = _build(saved, path, input_shape)
    for plan in saved.plans:
        try:
            model = apply(model, plan, inplace=True)
        except (SurgeonError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: its plan does not fit the model that {saved.spec} builds now "
                                  f"({exc}); the factory changed since the file was saved: restore it, "
                                  "or shrink the model again") from exc
    tensors = safetensors.torch.load_file(str(path))
    state = {**tensors, **{alias: tensors[name] for alias, name in saved.aliases.items()}}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: its tensors do not fit the model {saved.spec} builds after the plan "
                              f"({str(exc)[:500]}); the factory changed since the file was saved: restore "
                              "it, or shrink the model again") from exc
    return model.eval(), example


def _build(saved, path: Any, input_shape: Sequence[int] | None) -> tuple[nn.Module, Any]:
    """The dense model and example input from the factory, under seed 0 (the command line's
    default, so a factory's random example input is the one the model was shrunk on)."""
    shape = tuple(input_shape) if input_shape is not None else saved.input_shape
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(0)
        try:
            loaded = load_spec(saved.spec, shape)
        except (UsageError, Failure) as exc:
            from ._ckptfile import CheckpointError

            raise CheckpointError(f"{path}: cannot rebuild the model from its factory {saved.spec}: {exc}") from exc
    return loaded.model, loaded.example_input
