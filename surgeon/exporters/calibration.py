"""Calibration data for static int8, read without running code from data files.

>>> import torch
>>> [tuple(t.shape) for t in load([torch.randn(2, 4)] * 3, torch.randn(1, 4))]
[(2, 4), (2, 4), (2, 4)]

``source`` is one of:

* an iterable of inputs, each given like the example input (the API);
* a folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.webp``, sorted by name): each is
  converted to the example's channels (1: grey, 3: RGB), resized to its height and width and
  scaled to [0, 1], without any mean/std normalisation (save tensors for models that expect one);
* a ``.pt`` file, read with ``torch.load(weights_only=True)``: a tensor of samples (split into
  batches of 8), a list of tensors, or a dict with a tensor ``x``;
* a ``.npy`` / ``.npz`` file, read with ``allow_pickle=False``: an array of samples (``x`` if the
  ``.npz`` has several);
* ``file.py:FUNCTION``: a Python function (it runs: name only files you trust) returning an
  iterable of inputs.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from ._base import ExportError

__all__ = ["load", "CalibrationError", "IMAGE_SUFFIXES", "BATCH", "MAX_SAMPLES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
BATCH = 8  # samples per calibration input when a file holds one tensor of samples
MAX_SAMPLES = 1024  # more adds calibration time, not accuracy


class CalibrationError(ExportError, ValueError):
    """The calibration data cannot be read or does not fit the model's input (a bad argument, hence also a ValueError)."""


def load(source: Any, example_input: Any) -> list:
    """The calibration inputs named by ``source`` (see the module's docstring), each like ``example_input``."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        path = Path(text)
        if path.is_dir():
            return _images(path, example_input)
        head, sep, fn = text.rpartition(":")
        if sep and head.endswith(".py"):
            return _factory(Path(head), fn)
        if not path.is_file():
            raise CalibrationError(f"calibration {text} not found; pass a folder of images, a .pt/.npy/.npz file "
                                   f"of input tensors or file.py:FUNCTION")
        return _tensor_file(path)
    if not hasattr(source, "__iter__"):
        raise CalibrationError(f"calibration must be an iterable of example inputs, a folder, a file or "
                               f"file.py:FUNCTION, got {type(source).__name__}")
    return list(source)


def _split(t: torch.Tensor) -> list[torch.Tensor]:
    t = t.float() if t.dtype == torch.float64 else t
    return list(t[:MAX_SAMPLES].split(BATCH))


def _tensor_file(path: Path) -> list:
    import numpy as np

    suffix = path.suffix.lower()
    try:
        if suffix in (".npy", ".npz"):
            with np.load(path, allow_pickle=False) as z:
                if suffix == ".npy":
                    return _split(torch.from_numpy(np.array(z)))
                key = "x" if "x" in z.files else (z.files[0] if len(z.files) == 1 else None)
                if key is None:
                    raise CalibrationError(f"calibration {path} holds arrays {z.files}; name the inputs 'x'")
                return _split(torch.from_numpy(np.array(z[key])))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except CalibrationError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy and torch.load refuse pickles with many error types
        raise CalibrationError(f"calibration {path} cannot be read without running code from it "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); save plain tensors "
                               f"(torch.save(tensor) or numpy.savez(x=array))") from exc
    if isinstance(obj, dict) and isinstance(obj.get("x"), torch.Tensor):
        obj = obj["x"]
    if isinstance(obj, torch.Tensor) and obj.dim() > 0 and len(obj):
        return _split(obj)
    if isinstance(obj, (list, tuple)) and obj:
        return list(obj)[:MAX_SAMPLES]
    raise CalibrationError(f"calibration {path} holds a {type(obj).__name__}; save a tensor of samples, a list "
                           f"of inputs or a dict with a tensor 'x'")


def _factory(file: Path, fn: str) -> list:
    if not file.is_file():
        raise CalibrationError(f"calibration {file}:{fn}: {file} not found")
    spec = importlib.util.spec_from_file_location(f"_surgeon_calibration_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    factory = getattr(module, fn, None)
    if not callable(factory):
        raise CalibrationError(f"calibration {file}:{fn}: {file} has no function {fn!r}")
    data = factory()
    if isinstance(data, torch.Tensor):
        return _split(data)
    if not hasattr(data, "__iter__"):
        raise CalibrationError(f"calibration {file}:{fn} returned a {type(data).__name__}; return a list of inputs")
    return list(data)[:MAX_SAMPLES]


def _images(folder: Path, example_input: Any) -> list:
    try:
        from PIL import Image
    except ImportError as exc:
        raise CalibrationError("a folder of images needs Pillow: pip install pillow") from exc
    x = example_input if isinstance(example_input, torch.Tensor) else None
    if x is None or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise CalibrationError(f"calibration {folder} is a folder of images, which fits a model taking one "
                               f"(N, 1 or 3, H, W) image tensor; pass a .pt/.npz file of input tensors instead")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_SAMPLES]
    if not files:
        raise CalibrationError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    mode, (h, w) = ("L" if x.shape[1] == 1 else "RGB"), x.shape[2:]
    rows = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert(mode).resize((int(w), int(h)))
            t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).float().div(255.0)
        rows.append(t.view(int(h), int(w), -1).permute(2, 0, 1))
    return _split(torch.stack(rows))
