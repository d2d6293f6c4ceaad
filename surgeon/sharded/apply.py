"""Apply a plan to a checkpoint folder, shard by shard, into a new folder that ``from_pretrained``
loads: each input shard's tensors are read one at a time, sliced as the plan says and written to
one output shard; then the index and the updated ``config.json`` (the config fields the plan
sets, as :func:`surgeon.apply` sets them in memory). Peak memory is about one output shard plus
one tensor.

The plan is checked first, against the model the checkpoint's ``config.json`` builds on the meta
device, with the checks :func:`surgeon.apply` makes (fingerprint, shapes, indices, attributes,
config fields, drops; :mod:`surgeon.surgery.validate`); the plan is applied to that meta model,
which gives the new names (dropped layers renumber the rest) and the new config. Everything is
written into a temporary folder beside ``out_dir``, renamed to ``out_dir`` only once complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .. import _atomic
from ..planning.plan import Plan
from .files import INDEX, SINGLE, Checkpoint, CheckpointError
from .names import Source
from .plan import open_weights
from .stages import _trim

__all__ = ["apply_checkpoint", "meta_model", "Written"]


@dataclass(frozen=True)
class Written:
    """What :func:`apply_checkpoint` wrote: the folder, its shard files, the bytes of tensors."""

    folder: Path
    shards: tuple[str, ...]
    total_size: int


def meta_model(folder: str | os.PathLike) -> nn.Module:
    """The model ``folder``'s ``config.json`` describes (its first ``architectures`` entry, a
    transformers class), built on the meta device: shapes, no values."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(folder))
    names = list(getattr(config, "architectures", None) or ())
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise CheckpointError(f"{str(folder)!r}: config.json names no transformers class in 'architectures' "
                              f"({names}); pass model= (the model built on the meta device) instead")
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    with torch.device("meta"):
        model = cls(config).eval()
    # the stored dtype, as from_pretrained loads it: the capture then takes the paths it takes there
    return model.to(dtype) if isinstance(dtype, torch.dtype) and dtype.is_floating_point else model


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules(remove_duplicate=False)}


def _renamer(model: nn.Module):
    """old qualified tensor name -> the function giving its name after the plan (None if dropped)."""
    old = dict(model.named_modules(remove_duplicate=False))

    def rename(new_names: dict[int, str], name: str) -> str | None:
        mod_name, _, leaf = name.rpartition(".")
        mod = old.get(mod_name)
        new = None if mod is None else new_names.get(id(mod))
        return None if new is None else (f"{new}.{leaf}" if new else leaf)
    return rename


def _cut(t: torch.Tensor, slices: list) -> torch.Tensor:
    for s in slices:
        t = t.index_select(s.dim, torch.as_tensor(s.keep, dtype=torch.long))
    return t.contiguous()


def _jobs(ck: Checkpoint, srcs: dict[str, Source], plan: Plan, model: nn.Module, rename) -> dict[str, list]:
    """input shard -> [(output key, source, slices)] for every tensor to write; stored tensors the
    model does not name are copied as they are."""
    by_tensor: dict[str, list] = defaultdict(list)
    for s in plan.slices:
        by_tensor[s.tensor].append(s)
    aliases: dict[tuple[str, ...], list[str]] = defaultdict(list)  # stored keys -> the model's names
    for name, src in srcs.items():
        aliases[tuple(k for ks in src.keys for k in ks)].append(name)
    new_names = _module_names(model)
    jobs: dict[str, list] = defaultdict(list)
    used: set[str] = set()
    for keys, names in aliases.items():  # a tied tensor once, under the name it is stored by
        used.update(keys)
        name, src = names[0], srcs[names[0]]
        out = rename(new_names, src.first if src.stack is None else name)
        if out is None:
            continue  # a dropped layer's
        cut = next((by_tensor[n] for n in names if n in by_tensor), [])
        jobs[ck.weight_map[src.first]].append((out, src, cut))
    for key in ck.weight_map:
        if key not in used:
            jobs[ck.weight_map[key]].append((key, Source(((key,),)), []))
    return jobs


def apply_checkpoint(plan: Plan, in_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     model: nn.Module | None = None) -> Written:
    """Write the checkpoint ``in_dir`` with ``plan`` applied into the new folder ``out_dir``.

    ``model``: the model on the meta device (default: built from ``in_dir/config.json``). The
    plan is checked before anything is written; ``out_dir`` must not exist or be empty.

    >>> import tempfile, torch, transformers, surgeon
    >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                                num_attention_heads=2, vocab_size=64)
    >>> src, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> transformers.LlamaForCausalLM(cfg).save_pretrained(src)
    >>> x = torch.randint(0, 64, (1, 4))
    >>> p = surgeon.plan(meta_model(src), x, 0.6, weights=src)
    >>> w = apply_checkpoint(p, src, out)
    >>> transformers.LlamaForCausalLM.from_pretrained(out).config.intermediate_size < 64
    True
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a surgeon.Plan, got {type(plan).__name__}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointError(f"{str(out_dir)!r} exists and is not an empty folder; name a new folder")
    model = meta_model(in_dir) if model is None else model
    ck, srcs = open_weights(model, in_dir)
    from ..surgery import apply  # checks the plan against the model, then cuts the meta tensors

    rename = _renamer(model)
    apply(model, plan, inplace=True)
    jobs = _jobs(ck, srcs, plan, model, rename)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=out_dir.parent))
    try:
        written = _write(ck, jobs, tmp, model)
        os.chmod(tmp, 0o777 & ~_atomic._umask())  # mkdtemp makes it 0700; a plain mkdir would not
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Written(out_dir, written.shards, written.total_size)


def _write(ck: Checkpoint, jobs: dict[str, list], tmp: Path, model: nn.Module) -> Written:
    shards = [s for s in ck.shards if jobs.get(s)]
    names = [SINGLE] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map: dict[str, str] = {}
    total = 0
    for shard, out_name in zip(shards, names):
        tensors = {}
        for key, src, cut in jobs[shard]:
            t = _cut(src.read(ck), cut)
            tensors[key] = t
            weight_map[key] = out_name
            total += t.numel() * t.element_size()
        save_file(tensors, str(tmp / out_name), metadata={"format": "pt"})
        del tensors
        _trim()  # the shard's tensors back to the system, not pinned in the heap
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        _atomic.write_text(tmp / INDEX, json.dumps(index, indent=2))
    _atomic.write_text(tmp / "config.json", model.config.to_json_string())
    for extra in ck.folder.iterdir():  # tokenizer, generation config: copied as they are
        if extra.is_file() and not extra.name.endswith(".safetensors") and extra.name not in (INDEX, "config.json"):
            shutil.copyfile(extra, tmp / extra.name)
    return Written(tmp, tuple(names), total)
