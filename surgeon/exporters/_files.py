"""ONNX files on disk: external data past protobuf's limit, atomic writes, publishing with rollback.

A model whose weights pass :data:`EXTERNAL_DATA_FROM` bytes is written as two files: ``m.onnx``
(the graph) and ``m.onnx.data`` (the weights, page-aligned), the data file named by a relative
``location`` inside ``m.onnx``, so the two must sit side by side under exactly these names. Each
file is written under a temporary name beside its destination and renamed once complete
(:func:`surgeon._atomic.atomic_path`), the data file first, so ``m.onnx`` never appears before
its weights.

:func:`publish` moves the files an export built in its scratch folder to where the user asked,
and puts back what was there if anything fails before the ``with`` block ends (the parity check
on the published file, for one), Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator

from .._atomic import atomic_path
from ._base import ExportError

__all__ = ["EXTERNAL_DATA_FROM", "data_path_for", "save_model", "finalize", "data_files", "previous_data",
           "total_bytes", "publish"]

# protobuf refuses messages of 2 GiB or more; keep 16 MiB for the graph around the weights
EXTERNAL_DATA_FROM = 2**31 - 2**24
_ALIGN = 4096  # page-aligned offsets let onnxruntime map the weights instead of copying them
_INLINE_BELOW = 1024  # small tensors (shapes, scalars) stay in the graph, as onnx.save_model does


def data_path_for(path: str | os.PathLike) -> Path:
    """Where the weights of ``path`` go when they are external: ``m.onnx`` -> ``m.onnx.data``."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def _graphs(proto) -> Iterator:
    """The main graph and every subgraph (If / Loop / Scan bodies)."""
    todo = [proto.graph]
    while todo:
        g = todo.pop()
        yield g
        for node in g.node:
            for attr in node.attribute:
                todo.extend([attr.g] if attr.HasField("g") else [])
                todo.extend(attr.graphs)


def _tensor_bytes(t) -> int:
    return len(t.raw_data) if t.HasField("raw_data") else t.ByteSize()


def _weight_bytes(proto) -> int:
    """Bytes of the tensors held inside the proto (ModelProto.ByteSize() serializes, and fails past 2 GiB)."""
    total = 0
    for g in _graphs(proto):
        total += sum(_tensor_bytes(t) for t in g.initializer)
        total += sum(_tensor_bytes(a.t) for n in g.node for a in n.attribute if a.HasField("t"))
    return total


def _write_data(proto, tmp: Path, location: str) -> None:
    """Move every initializer of ``_INLINE_BELOW`` bytes or more to ``tmp``, recorded in the proto as
    ``location`` (the name ``tmp`` will be renamed to)."""
    from onnx import TensorProto, numpy_helper
    from onnx.external_data_helper import set_external_data, uses_external_data

    with open(tmp, "wb") as f:
        for g in _graphs(proto):
            for t in g.initializer:
                if uses_external_data(t) or t.data_type == TensorProto.STRING or _tensor_bytes(t) < _INLINE_BELOW:
                    continue
                if not t.HasField("raw_data"):  # typed fields (float_data...) cannot be external
                    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
                f.write(b"\0" * (-f.tell() % _ALIGN))
                offset = f.tell()
                f.write(t.raw_data)
                set_external_data(t, location, offset, len(t.raw_data))
                t.ClearField("raw_data")
        f.flush()
        os.fsync(f.fileno())


def _write_proto(proto, tmp: Path) -> None:
    with open(tmp, "wb") as f:
        f.write(proto.SerializeToString())
        f.flush()
        os.fsync(f.fileno())


def save_model(proto, path: str | os.PathLike) -> Path | None:
    """Write ``proto`` (holding all its weights) at ``path``, atomically; past
    :data:`EXTERNAL_DATA_FROM` bytes of weights, they go to :func:`data_path_for` beside it.
    Returns the data file, or None when the weights are inside ``path``. Changes ``proto``."""
    path = Path(path)
    if _weight_bytes(proto) < EXTERNAL_DATA_FROM:
        with atomic_path(path) as tmp:
            _write_proto(proto, tmp)
        return None
    data = data_path_for(path)
    # the inner block renames the data file first, so the .onnx only appears once its weights are there
    with atomic_path(path) as tmp_onnx:
        with atomic_path(data) as tmp_data:
            _write_data(proto, tmp_data, data.name)
            _write_proto(proto, tmp_onnx)
    return data


def data_files(path: str | os.PathLike) -> list[Path]:
    """The external data files the ONNX file at ``path`` names (beside it); [] for a self-contained
    file, or one that is no ONNX file at all (a previous destination may hold anything)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not an ONNX file: it names no data files
        return []
    names = {ExternalDataInfo(t).location for g in _graphs(proto) for t in g.initializer if uses_external_data(t)}
    return [path.parent / n for n in sorted(names) if n and Path(n).name == n]  # only plain names beside it


def previous_data(path: str | os.PathLike) -> list[Path]:
    """The data file an earlier export left beside ``path``: named as :func:`data_path_for` names
    it and by the ONNX file at ``path`` (a data file of another name may be someone else's)."""
    return [d for d in data_files(path) if d == data_path_for(path)]


def total_bytes(path: str | os.PathLike) -> int:
    """Size of the ONNX file at ``path`` and of its external data files."""
    return os.path.getsize(path) + sum(os.path.getsize(p) for p in data_files(path) if p.exists())


def finalize(src: str | os.PathLike, dst: str | os.PathLike) -> Path | None:
    """The ONNX file at ``src`` (in whatever layout a tool wrote it, data files included) as ``dst``
    in the layout of :func:`save_model`; returns the data file or None. ``src`` is consumed."""
    import onnx

    src, dst = Path(src), Path(dst)
    data = data_files(src)
    if not data and os.path.getsize(src) < EXTERNAL_DATA_FROM:
        os.replace(src, dst)
        return None
    if len(data) == 1:
        return _relocate(src, data[0], dst)
    from google.protobuf.message import EncodeError

    proto = onnx.load(str(src))  # no data file, or several: read every weight and write them again
    try:
        return save_model(proto, dst)
    except (ValueError, EncodeError) as exc:  # a graph that alone passes protobuf's limit (huge Constant nodes)
        raise ExportError(f"cannot write {dst.name}: {type(exc).__name__}: {exc}") from exc


def _relocate(src: Path, data: Path, dst: Path) -> Path:
    """Rename ``src``'s one data file for ``dst`` and rewrite the locations ``src`` records
    (the offsets stay valid), without reading the weights."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    proto = onnx.load(str(src), load_external_data=False)
    new = data_path_for(dst)
    for g in _graphs(proto):
        for t in g.initializer:
            for entry in t.external_data if uses_external_data(t) else ():
                if entry.key == "location":
                    entry.value = new.name
    with atomic_path(dst) as tmp:
        _write_proto(proto, tmp)
        os.replace(data, new)  # before the .onnx appears, which the block's end renames
    src.unlink()
    return new


@contextlib.contextmanager
def publish(moves: Iterable[tuple[Path, Path]], scratch: str | os.PathLike, retire: Iterable[Path] = ()):
    """Rename each (built, destination) in order, and on any exception inside the ``with`` put back
    what each destination held before; after a clean exit, delete ``retire`` (the previous
    export's data files) unless a destination overwrote it."""
    saved: list[tuple[Path, Path | None]] = []
    try:
        for i, (src, dst) in enumerate(moves):
            saved.append((dst, _set_aside(dst, Path(scratch) / f"previous-{i}")))
            try:
                os.replace(src, dst)
            except OSError as exc:
                raise ExportError(f"cannot write {dst}: {exc}") from exc
        yield
    except BaseException:
        for dst, old in reversed(saved):
            with contextlib.suppress(OSError):
                if old is not None:
                    os.replace(old, dst)
                else:
                    dst.unlink(missing_ok=True)
        raise
    written = {dst for dst, _ in saved}
    for p in retire:
        if p not in written:
            with contextlib.suppress(OSError):
                p.unlink()


def _set_aside(dst: Path, keep: Path) -> Path | None:
    """Keep the file at ``dst`` as ``keep`` (a hard link: ``dst`` stays in place until replaced)."""
    if not os.path.lexists(dst):
        return None
    try:
        os.link(dst, keep, follow_symlinks=False)
    except (OSError, NotImplementedError):  # no hard links here: move it aside, put back on failure
        os.replace(dst, keep)
    return keep
