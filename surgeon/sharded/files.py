"""A Hugging Face checkpoint folder, read one tensor at a time: ``config.json`` plus either one
``model.safetensors`` or shards listed by ``model.safetensors.index.json``. Nothing is loaded
until asked for, and a read returns one tensor (or one slice of one tensor)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import SurgeonError

__all__ = ["CheckpointError", "Checkpoint", "INDEX", "SINGLE"]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class CheckpointError(SurgeonError, ValueError):
    """A checkpoint folder that cannot be read, or that does not match the model or the plan."""


class Checkpoint:
    """The tensors of a checkpoint folder by name; each read opens its shard lazily.

    >>> import tempfile, torch, safetensors.torch
    >>> d = Path(tempfile.mkdtemp())
    >>> safetensors.torch.save_file({"w": torch.ones(2, 3)}, str(d / SINGLE))
    >>> ck = Checkpoint(d)
    >>> ck.shape("w"), ck.read("w").sum().item()
    ((2, 3), 6.0)
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CheckpointError(f"checkpoint folder {str(self.folder)!r} does not exist or is not a folder")
        index = self.folder / INDEX
        if index.is_file():
            try:
                raw = json.loads(index.read_text())
                weight_map = dict(raw["weight_map"])
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index} is not a safetensors index (a JSON object with a "
                                      f"'weight_map'): {type(exc).__name__}: {exc}") from exc
            self.metadata: dict[str, Any] = dict(raw.get("metadata") or {})
        elif (self.folder / SINGLE).is_file():
            with safe_open(str(self.folder / SINGLE), framework="pt") as f:
                weight_map = {k: SINGLE for k in f.keys()}
            self.metadata = {}
        else:
            raise CheckpointError(f"{str(self.folder)!r} holds neither {INDEX} nor {SINGLE}; save the model with "
                                  f"save_pretrained(folder, safe_serialization=True) (pickled .bin checkpoints "
                                  f"are not read)")
        for key, shard in weight_map.items():
            if not isinstance(shard, str) or Path(shard).name != shard or not (self.folder / shard).is_file():
                raise CheckpointError(f"the index maps tensor {key!r} to shard {shard!r}, which is not a file "
                                      f"in {str(self.folder)!r}")
        self.weight_map = weight_map
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, str] = {}
        for shard in self.shards:
            with safe_open(str(self.folder / shard), framework="pt") as f:
                for key in f.keys():
                    sl = f.get_slice(key)
                    self._shapes[key] = tuple(sl.get_shape())
                    self._dtypes[key] = sl.get_dtype()
        missing = [k for k in weight_map if k not in self._shapes]
        if missing:
            raise CheckpointError(f"the index lists {missing[0]!r} in {weight_map[missing[0]]!r}, which does not "
                                  f"hold it ({len(missing)} such tensors)")

    @property
    def shards(self) -> list[str]:
        """The shard files, in the order of their names."""
        return sorted(set(self.weight_map.values()))

    def keys_of(self, shard: str) -> list[str]:
        return [k for k, s in self.weight_map.items() if s == shard]

    def __contains__(self, key: str) -> bool:
        return key in self.weight_map

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def dtype(self, key: str) -> str:
        return self._dtypes[key]

    def read(self, key: str, rows: slice | None = None) -> torch.Tensor:
        """Tensor ``key`` (only rows ``rows`` of it, if given), read from its shard."""
        if key not in self.weight_map:
            raise CheckpointError(f"tensor {key!r} is not in the checkpoint {str(self.folder)!r}")
        with safe_open(str(self.folder / self.weight_map[key]), framework="pt") as f:
            return f.get_tensor(key) if rows is None else f.get_slice(key)[rows]

    def config(self) -> dict:
        path = self.folder / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{str(self.folder)!r} has no config.json; a Hugging Face checkpoint folder "
                                  f"(save_pretrained) has one")
        return json.loads(path.read_text())

    @property
    def size_bytes(self) -> int:
        return sum((self.folder / s).stat().st_size for s in self.shards)
