"""Leave a model as it was: what a capture (or a warm-up forward) writes into it is taken back.

Models write state in ``forward``: a detection head caches its anchors the first time it sees an
input size, a module keeps the last shape it saw, a buffer counts calls. When a capture is that
call, the state written is a FakeTensor or an fx Proxy, and it stays in the user's model. A
:class:`Snapshot` records, for every module, its instance ``__dict__`` (which holds the parameter,
buffer and submodule registries, the hooks and plain attributes such as ``self.anchors``), the
contents of the plain containers in it (so a cache dict filled in place is emptied again), the
values of its buffers, and the attributes of the user's own classes (class-level defaults that a
capture could overwrite); :meth:`Snapshot.restore` puts back whatever differs.

Parameters are not copied (they are the bulk of a model and no capture writes them in place);
their version counters are compared, so a capture that did write one is reported.

:class:`ReadRecorder` records which plain int (or int list) attributes of the user's own modules
``forward`` reads during a capture: ``assert x.shape[1] == self.channels`` reads a width the
graph never shows.
"""

from __future__ import annotations

import contextlib
import operator
from collections import OrderedDict
from typing import Any, Iterator

import torch
from torch import nn

from .. import _walks

__all__ = ["Snapshot", "untouched", "ReadRecorder", "user_class"]

_CONTAINERS = (dict, OrderedDict, list, set)
_MISSING = object()
_BUFFER_BYTES = 1 << 28  # buffers copied up to this size in all; beyond it only versions are kept


def user_class(cls: type) -> bool:
    """A class of the user's (or a library's, torchvision's included) own, not one of torch's."""
    module = cls.__module__ or ""
    return module != "torch" and not module.startswith("torch.")


def _contents(v: Any) -> Any:
    if isinstance(v, dict):
        return list(v.items())
    return list(v)


_VALUES = (type(None), bool, int, float, complex, str, bytes, tuple, frozenset, torch.Size, torch.dtype,
           torch.device)


def _equal(a: Any, b: Any, depth: int = 3) -> bool:
    """The same object, or equal plain values: torch.export copies a conv's tuples and a Hugging
    Face model's plan dicts, which is no state written."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b) or depth == 0:
        return False
    if kind in _CONTAINERS or kind is tuple:
        if len(a) != len(b):
            return False
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(_equal(v, b[k], depth - 1) for k, v in a.items())
        if kind is set:
            return a == b
        return all(_equal(x, y, depth - 1) for x, y in zip(a, b))
    if kind not in _VALUES:
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values that cannot be compared are different
        return False


def _same(saved: Any, now: Any) -> bool:
    if not saved:  # most containers (hook registries, a leaf's submodules) are empty: no list built
        return not now
    items = _contents(now)
    if len(items) != len(saved):
        return False
    if isinstance(now, dict):
        return all(k1 == k2 and v1 is v2 for (k1, v1), (k2, v2) in zip(saved, items))
    return all(a is b for a, b in zip(saved, items))


def _same_entries(now: dict, saved: dict) -> bool:
    """The same keys in the same order, each holding the same object (a quick test, in C loops,
    of what ``all(now.get(k) is v for k, v in saved.items())`` asks; False may still mean equal)."""
    return list(now) == list(saved) and all(map(operator.is_, now.values(), saved.values()))


class Snapshot:
    """The state of every module of ``model``, to compare with and restore later."""

    def __init__(self, model: nn.Module):
        every = _walks.module_list(model)
        # torch's own modules write no attributes in forward (in eval mode): their tensors are
        # watched below; the root and the user's own classes are recorded in full
        mine = {cls for cls in {type(m) for m in every} if user_class(cls)}
        self.modules = [m for i, m in enumerate(every) if i == 0 or type(m) in mine]
        self._dicts = [dict(vars(m)) for m in self.modules]
        self._inner = [{k: (v, _contents(v) if v else ()) for k, v in d.items() if type(v) in _CONTAINERS}
                       for d in self._dicts]
        self._clean = False  # set by changes() when it found nothing, which restore() then trusts
        classes = {type(m) for m in self.modules} & mine
        self._classes = {cls: dict(vars(cls)) for cls in classes}
        self._versions: dict[int, tuple[torch.Tensor, int]] = {}
        self._copies: dict[int, torch.Tensor] = {}
        budget = _BUFFER_BYTES
        versions = self._versions
        for m in every:
            for t in m._parameters.values():
                if t is not None and id(t) not in versions and not t.is_meta:
                    versions[id(t)] = (t, t._version)
            buffers = m._buffers
            if not buffers:
                continue
            for t in buffers.values():
                if t is None or id(t) in versions or t.is_meta:
                    continue
                versions[id(t)] = (t, t._version)
                nbytes = t.numel() * t.element_size()
                if nbytes <= budget:
                    budget -= nbytes
                    self._copies[id(t)] = t.detach().clone()

    def changes(self) -> list[str]:
        """What differs from the snapshot, one short line each (empty: nothing was written)."""
        out = []
        for m, saved, inner in zip(self.modules, self._dicts, self._inner):
            now = vars(m)
            where = type(m).__name__
            if len(now) == len(saved) and (_same_entries(now, saved)
                                           or all(now.get(k, _MISSING) is v for k, v in saved.items())):
                out.extend(f"{where}.{k} changed in place" for k, (box, items) in inner.items()
                           if (items or box) and not _same(items, box))  # the common case: every entry the same object
                continue
            for k in now.keys() - saved.keys():
                out.append(f"{where}.{k} added")
            for k, v in saved.items():
                if k not in now:
                    out.append(f"{where}.{k} deleted")
                elif not _equal(now[k], v):
                    out.append(f"{where}.{k} replaced")
                elif k in inner and not _same(inner[k][1], v):
                    out.append(f"{where}.{k} changed in place")
        for cls, saved in self._classes.items():
            now = vars(cls)
            if now.keys() != saved.keys() or any(now[k] is not v for k, v in saved.items()):
                out.append(f"class {cls.__name__} changed")
        for t, version in self._versions.values():
            if t._version != version:
                out.append(f"a tensor of shape {tuple(t.shape)} written in place")
        self._clean = not out
        return out

    def restore(self) -> None:
        """Put every module, class and buffer back as it was when the snapshot was taken. Right
        after :meth:`changes` found nothing (as :func:`untouched` is used by captures) there is
        nothing to put back; call :meth:`changes` again if the model ran in between."""
        if self._clean:
            return
        for m, saved, inner in zip(self.modules, self._dicts, self._inner):
            now = vars(m)
            if now.keys() != saved.keys() or any(now[k] is not v for k, v in saved.items()):
                now.clear()
                now.update(saved)
            for k, (box, items) in inner.items():
                if not _same(items, box):
                    box.clear()
                    if isinstance(box, dict):
                        box.update(items)
                    elif isinstance(box, list):
                        box.extend(items)
                    else:
                        box.update(items)
        for cls, saved in self._classes.items():
            self._restore_class(cls, saved)
        with torch.no_grad():
            for key, (t, version) in self._versions.items():
                if t._version != version and key in self._copies:
                    t.copy_(self._copies[key])

    @staticmethod
    def _restore_class(cls: type, saved: dict) -> None:
        now = dict(vars(cls))
        for k in now.keys() - saved.keys():
            delattr(cls, k)
        for k, v in saved.items():
            if k not in now or now[k] is not v:
                if k in ("__dict__", "__weakref__", "__doc__", "__module__"):
                    continue
                setattr(cls, k, v)


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[Snapshot]:
    """Run the body, then put ``model`` back as it was before it (whatever the body raised)."""
    snap = Snapshot(model)
    try:
        yield snap
    finally:
        snap.restore()


def _int_like(v: Any) -> bool:
    if type(v) is int:
        return True
    return type(v) in (list, tuple) and 0 < len(v) <= 64 and all(type(e) is int for e in v)


class _Recording:
    """A data descriptor installed on a user class for one attribute name while a capture runs:
    reads of the instance's own value are recorded, everything else behaves as before (no class
    of the MRO defines the name, so the instance ``__dict__`` is where the value lives)."""

    def __init__(self, name: str, log: set):
        self.name, self.log = name, log

    def __get__(self, obj, owner=None):
        if obj is None:
            raise AttributeError(self.name)
        try:
            value = obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None
        self.log.add((id(obj), self.name))
        return value

    def __set__(self, obj, value):
        obj.__dict__[self.name] = value

    def __delete__(self, obj):
        try:
            del obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None


class ReadRecorder:
    """Within ``with ReadRecorder(model) as rec:``, record which plain int (or list of ints)
    attributes of the model's user-defined modules are read; :meth:`reads` lists them as
    (module path, attribute, value). Modules whose attributes surgery rewrites from their tensors
    (``skip(module)`` true) are left out."""

    def __init__(self, model: nn.Module, skip=None):
        self.model = model
        self.skip = skip
        self.log: set = set()
        self._installed: list[tuple[type, str]] = []

    def __enter__(self) -> "ReadRecorder":
        names: dict[type, set[str]] = {}
        for m in _walks.module_list(self.model):
            cls = type(m)
            if not user_class(cls) or (self.skip is not None and self.skip(m)):
                continue
            for k, v in vars(m).items():
                if not k.startswith("_") and k != "training" and _int_like(v):
                    names.setdefault(cls, set()).add(k)
        for cls, attrs in names.items():
            for k in sorted(attrs):
                if any(k in vars(klass) for klass in cls.__mro__):
                    continue  # a class-level value or descriptor: not ours to wrap
                try:
                    setattr(cls, k, _Recording(k, self.log))
                except (TypeError, AttributeError):  # a class that takes no new attributes
                    continue
                self._installed.append((cls, k))
        return self

    def __exit__(self, *exc) -> None:
        for cls, k in self._installed:
            if isinstance(vars(cls).get(k), _Recording):
                delattr(cls, k)
        self._installed = []

    def reads(self) -> tuple[tuple[str, str, Any], ...]:
        """(module path, attribute, value) of every recorded read, in a stable order."""
        names = {id(m): n for n, m in _walks.modules(self.model).items()}
        out = set()
        for ident, k in self.log:
            path = names.get(ident)
            if path is None:
                continue
            mod = self.model.get_submodule(path) if path else self.model
            v = vars(mod).get(k)
            if _int_like(v):
                out.add((path, k, tuple(v) if isinstance(v, list) else v))
        return tuple(sorted(out, key=lambda r: (r[0], r[1])))
