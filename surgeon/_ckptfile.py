"""The checkpoint file format (see :mod:`surgeon.checkpoint`): writing and reading it, no model building."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from torch import nn

from . import SurgeonError, _atomic

__all__ = ["save", "read", "save_pretrained", "is_checkpoint", "factory_spec", "check_pretrained_dest",
           "CheckpointError", "Saved"]

FORMAT = "surgeon-checkpoint/1"
# what save_pretrained writes: an --out folder holding only these may be replaced
_PRETRAINED_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json",
                     "pytorch_model.bin.index.json")


class CheckpointError(SurgeonError, ValueError):
    """A checkpoint cannot be written or rebuilt; the message says what to do."""


class Saved(NamedTuple):
    """What a checkpoint's metadata says: how to rebuild the model it holds."""

    spec: str
    plans: tuple  # of surgeon.Plan, applied in order
    input_shape: tuple[int, ...] | None
    aliases: dict  # {name: stored name} for tensors shared under several names


def factory_spec(spec: str) -> str:
    """``spec`` as it is stored: a file factory's path made absolute; refuses specs with no factory."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in ("torchvision", "timm") and rest:
        return spec
    if ".py:" in spec and not spec.endswith(".py:"):
        file, _, func = spec.rpartition(":")
        return f"{Path(file).resolve()}:{func}"
    if prefix == "hf":
        raise CheckpointError("a Hugging Face model is saved with save_pretrained into a folder; "
                              "use surgeon.checkpoint.save_pretrained (--out FOLDER on the command line)")
    raise CheckpointError(f"'{spec}' names no factory that could rebuild the model (a pickled model has "
                          "none); build it with a file.py:FUNCTION spec, a function that returns the model, "
                          "or torchvision:NAME / timm:NAME")


def save(model: nn.Module, plan: Any, spec: str, path: str | os.PathLike,
         input_shape: Sequence[int] | None = None) -> Path:
    """Write ``model`` (``spec``'s model after ``plan``, one Plan or a sequence applied in order)
    to ``path`` as one safetensors file, atomically: on any failure nothing is left behind."""
    import safetensors.torch

    from . import Plan

    factory = factory_spec(spec)
    plans = (plan,) if isinstance(plan, Plan) else tuple(plan)
    if not plans or not all(isinstance(p, Plan) for p in plans):
        raise CheckpointError("plan must be the surgeon.Plan that made the model (or the sequence of them)")
    tensors, aliases = _distinct(model.state_dict())
    meta = {"format": FORMAT, "spec": factory,
            "plans": json.dumps([json.loads(p.to_json()) for p in plans]), "aliases": json.dumps(aliases)}
    if input_shape is not None:
        meta["input_shape"] = ",".join(str(int(d)) for d in input_shape)
    with _atomic.atomic_path(path, ".safetensors") as tmp:
        safetensors.torch.save_file(tensors, tmp, metadata=meta)
        _plain_mode(tmp, 0o666)  # safetensors writes 0600; a saved model is as readable as any file
    return Path(path)


def _distinct(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Each distinct tensor once (safetensors refuses shared storage) and ``{alias: stored name}``;
    a tensor that overlaps another's storage without being the same view is copied."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, t in state.items():
        t = t.detach()
        if t.device.type == "meta":
            raise CheckpointError(f"'{name}' is on the meta device (it holds no values); materialise the "
                                  "model before saving it")
        storage = (t.device, t.untyped_storage().data_ptr())
        view = (*storage, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if view in views:
            aliases[name] = views[view]
            continue
        views[view] = name
        whole = t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        t = t.cpu()
        tensors[name] = t if whole and storage not in storages and t.numel() else t.contiguous().clone()
        storages.add(storage)
    return tensors, aliases


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file (a torch.save file is a zip or a pickle)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 8 + struct.unpack("<Q", head[:8])[0] <= size


def read(path: str | os.PathLike) -> Saved:
    """The factory spec, plans and input shape stored in checkpoint ``path`` (no model is built)."""
    from safetensors import safe_open

    from . import Plan

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    if meta.get("format") != FORMAT or not meta.get("spec"):
        raise CheckpointError(f"{path} is a safetensors file without a surgeon factory spec in its metadata, "
                              "so there is no way to rebuild the model around its tensors; save it with "
                              "`surgeon shrink SPEC --out FILE` or surgeon.checkpoint.save")
    try:
        plans = tuple(Plan.from_dict(d) for d in json.loads(meta["plans"]))
        aliases = json.loads(meta.get("aliases") or "{}")
        shape = tuple(int(d) for d in meta["input_shape"].split(",")) if meta.get("input_shape") else None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the plan in its metadata cannot be read ({exc}); it was written by "
                              "another surgeon version or damaged: shrink the model again") from exc
    return Saved(meta["spec"], plans, shape, aliases)


def save_pretrained(model: nn.Module, folder: str | os.PathLike) -> Path:
    """``model.save_pretrained`` into ``folder``, atomically: written to a temporary folder beside
    it and renamed. An existing ``folder`` is replaced only if it holds nothing but what
    save_pretrained writes (so no unrelated folder is ever deleted)."""
    dest = Path(folder)
    check_pretrained_dest(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        model.save_pretrained(str(tmp))
        _plain_mode(tmp, 0o777)  # mkdtemp makes it 0700; a plain mkdir would not
        for f in tmp.rglob("*"):
            _plain_mode(f, 0o777 if f.is_dir() else 0o666)
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def check_pretrained_dest(dest: Path) -> None:
    """Refuse a destination that is a file, or a folder holding files save_pretrained does not write."""
    if dest.exists() and not dest.is_dir():
        raise CheckpointError(f"{dest} is a file; a Hugging Face model is saved with save_pretrained into a "
                              "folder: pass a folder path such as small/")
    if dest.is_dir():
        other = [p.name for p in dest.iterdir() if not _pretrained_file(p.name)]
        if other:
            raise CheckpointError(f"{dest} exists and holds files save_pretrained does not write "
                                  f"({', '.join(sorted(other)[:5])}); pass a new or empty folder")


def _pretrained_file(name: str) -> bool:
    return name in _PRETRAINED_FILES or (name.startswith(("model", "pytorch_model"))
                                         and name.endswith((".safetensors", ".bin")))


def _plain_mode(path: Path, mode: int) -> None:
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, mode & ~mask)


def _swap_in(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` to ``dest``; an old ``dest`` is moved aside first and restored on failure."""
    if not dest.exists():
        os.rename(tmp, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    old.rmdir()  # only its unique name is wanted
    os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
