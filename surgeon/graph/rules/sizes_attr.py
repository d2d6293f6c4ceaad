"""Piece sizes kept in a list attribute: ``torch.split(x, self.splits, dim=1)`` (MixConv-style
branches of different widths).

fx writes the list into the graph as it was read (``[16, 48]``); the attribute it came from is
found on the innermost module of the call that holds an equal list or tuple of ints, and each of
its entries follows the width of its piece (surgery rewrites entry i to the kept width of piece
i). In an exported graph every size is a number, so the pieces are frozen with a question for
:mod:`surgeon.analysis.probe`: does entry i of the split's sizes follow the width of piece i?
"""

from __future__ import annotations

from typing import Sequence

from ...slicing.fixers import has_fixer
from .._snapshot import user_class
from ..ir import DimKey
from .base import RuleContext


def split_sizes_attr(ctx: RuleContext, pieces: Sequence[DimKey], sizes: Sequence) -> bool:
    """Tie the pieces of a split whose sizes are the literal list ``sizes`` to the list attribute
    they come from; False where there is none (the caller freezes the dim)."""
    if len(sizes) != len(pieces) or not all(type(s) is int for s in sizes):
        return False
    found = find_list_attr(ctx, list(sizes))
    if ctx.traced.mode == "export":
        for i, (key, size) in enumerate(zip(pieces, sizes)):
            ctx.freeze(key, "split sizes are written in the code")
            ctx.c.probes.setdefault(key, []).append(
                (ctx.node.name, i, size, tuple((module, attr, i) for module, attr in found)))
        return True
    if not found:
        return False
    for i, key in enumerate(pieces):
        for module, attr in found:
            ctx.attr_fix(module, attr, key, index=i)
    return True


def sizes_from_attr(ctx: RuleContext, written: list, pos: int) -> list[tuple[str, str, int]]:
    """``(module, attr, pos)`` for each list or tuple attribute that ``forward`` read and that
    equals all the sizes ``written`` into the node (MetaFormer's ``scale.view(self.shape)``
    with ``self.shape = (dim, 1, 1)``): entry ``pos`` follows the width."""
    if not written or not all(type(s) is int for s in written) or not 0 <= pos < len(written):
        return []
    return [(module, attr, pos) for module, attr in find_list_attr(ctx, list(written))]


def find_attr(ctx: RuleContext, value: int) -> list[tuple[str, str]]:
    """Integer attributes equal to ``value`` on the innermost module that has any (read in
    ``forward`` or not: one that holds the width is kept in step with it)."""
    return _innermost(ctx, lambda a, v: type(v) is int and v == value and a != "training"
                      and not a.endswith(("idx", "index", "_id")), unread=True)  # positions, not widths


def find_list_attr(ctx: RuleContext, sizes: list[int]) -> list[tuple[str, str]]:
    """List or tuple attributes equal to ``sizes`` on the innermost module that has any, of those
    ``forward`` read during the capture (a list equal by chance to sizes written in the code is
    not the source)."""
    return _innermost(ctx, lambda a, v: type(v) in (list, tuple) and len(v) == len(sizes)
                      and all(type(e) is int for e in v) and list(v) == sizes)


def _innermost(ctx: RuleContext, match, unread: bool = False) -> list[tuple[str, str]]:
    """``(path, attr)`` of the public attributes that ``match`` on the innermost module of the
    node's module stack (then the root) that has any; unless ``unread``, only those ``forward``
    read during the capture, where the recorder would have seen it."""
    read = {(m, a) for m, a, _ in getattr(ctx.traced, "attr_reads", ())}
    stack = ctx.node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else k for k, v in stack.items()]
    model = ctx.traced.model
    for path in list(reversed(paths)) + [""]:
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if ctx.traced.mode == "export" and has_fixer(mod):
            return []  # surgery sets this module's widths from its tensors; export sizes are shapes
        hits = [(path, a) for a, v in vars(mod).items() if not a.startswith("_") and match(a, v)
                and (unread or (path, a) in read or not _recorded(mod, a))]
        if hits:
            return hits
    return []


def _recorded(mod, attr: str) -> bool:
    """Would the capture's read recorder (:class:`~surgeon.graph._snapshot.ReadRecorder`) have
    seen ``forward`` read ``mod.attr``? Then one it did not see is not where sizes came from."""
    cls = type(mod)
    return user_class(cls) and not has_fixer(mod) and not any(attr in vars(k) for k in cls.__mro__)
