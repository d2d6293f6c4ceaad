"""Ops that move, slice, join or regroup dimensions: cat, stack, split, getitem,
view/reshape/flatten/unflatten, permute/transpose, expand, pad, pixel shuffle and channel
shuffle. Ops whose result depends on the width they see (roll, flip, repeat, narrow, index
tensors) are in :mod:`.width`; the sizes and bounds written into the ops here are checked with
its helpers."""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .aten_index import couple_index
from .base import RuleContext, register
from .sizes_attr import find_attr as _find_attr, sizes_from_attr, split_sizes_attr
from .width import depends_on_width, follow_size, reads_sizes, stacked_whole, unbind_count, whole_unbind

aten = torch.ops.aten


# -- joining and slicing ------------------------------------------------------------------------------
def _tensor_list(ctx: RuleContext, seq) -> list:
    """The tensors of a sequence argument; a tuple-valued node (``torch.cat(y.chunk(2, 1))``)
    stands for its elements, ``(node, i)``."""
    if isinstance(seq, fx.Node):
        shapes = ctx.traced.info[seq.name].shape
        seq = [(seq, i) for i in range(len(shapes))] if isinstance(shapes, list) else [seq]
    return [t for t in seq if ctx.shape(t) is not None]


@register(torch.cat, torch.concat, torch.concatenate, aten.cat, aten.concat)
def cat(ctx: RuleContext) -> None:
    tensors = _tensor_list(ctx, ctx.arg(0, "tensors"))
    dim = ctx.arg(1, "dim", 0) % len(ctx.out_shape)
    offset = 0
    for t in tensors:
        ts = ctx.shape(t)
        if len(ts) != len(ctx.out_shape):  # legacy empty tensors in cat
            continue
        for d in range(len(ts)):
            if d != dim:
                ctx.eq(ctx.v(t, d), ctx.out(d))
        n = ts[dim]
        ctx.rel(ctx.v(t, dim), ctx.out(dim), np.arange(n), offset + np.arange(n))
        offset += n


@register(torch.stack, aten.stack)
def stack(ctx: RuleContext) -> None:
    """Each tensor's dims line up with the output's around the new one. The new dim counts the
    tensors, so it is tied only when they are all of ``x.unbind(d)``: then it is ``x``'s dim d."""
    seq = ctx.arg(0, "tensors")
    tensors = _tensor_list(ctx, seq)
    dim = ctx.arg(1, "dim", 0) % len(ctx.out_shape)
    for t in tensors:
        for d in range(len(ctx.shape(t))):
            ctx.eq(ctx.v(t, d), ctx.out(d if d < dim else d + 1))
    source = whole_unbind(ctx, seq)
    if source is not None and stacked_whole(seq):
        ctx.eq(ctx.v(*source), ctx.out(dim))


@reads_sizes
@register(torch.split, torch.chunk, torch.tensor_split, torch.unbind, "method:split", "method:chunk",
          "method:tensor_split", "method:unbind", "method:split_with_sizes", aten.split,
          aten.split_with_sizes, aten.chunk, aten.unbind, aten.tensor_split)
def split(ctx: RuleContext) -> None:
    """Pieces along ``dim`` are slices of the input. Where the op decides the piece sizes from
    the width itself (``chunk``), the pieces are tied index by index so they stay equal; where
    the code writes the sizes (``split(8)``, ``split([8, 16])``) they are fixed through the
    attribute they come from, or the dim is frozen."""
    x = ctx.arg(0)
    xs = ctx.shape(x)
    name = ctx.node.target if isinstance(ctx.node.target, str) else getattr(ctx.node.target, "__name__", "")
    name = name.split(":")[-1]
    unbind = "unbind" in name
    dim = ctx.node.kwargs.get("dim", ctx.node.args[1 if unbind else 2] if len(ctx.node.args) > (1 if unbind else 2)
                              else 0)
    dim %= len(xs)
    outs = [o for o in ctx.out_shapes()]
    offset = 0
    pieces = []
    for i, s in enumerate(outs):
        if s is None:
            continue
        for d in range(len(xs)):
            if d != dim:
                ctx.eq(ctx.v(x, d), ctx.out(d if (not unbind or d < dim) else d - 1, i))
        if unbind:
            continue
        n = s[dim]
        ctx.rel(ctx.v(x, dim), ctx.out(dim, i), offset + np.arange(n), np.arange(n))
        pieces.append(ctx.out(dim, i))
        offset += n
    if unbind:
        return unbind_count(ctx, x, dim)
    if not pieces:
        return
    sizes = {ctx.c.sizes[p] for p in pieces}
    size_arg = ctx.arg(1, "split_size_or_sections", ctx.node.kwargs.get("split_size"))
    # chunk(k) and tensor_split(k) cut the width they see into k: equal pieces stay equal
    if len(sizes) == 1 and ("chunk" in name or "tensor_split" in name and type(size_arg) is int):
        _tie_equal(ctx, pieces)
        return
    if isinstance(size_arg, int) and len(sizes) == 1 and ctx.c.is_channel_like(ctx.v(x, dim)):
        found = _find_attr(ctx, size_arg)
        if ctx.traced.mode == "export":
            _tie_equal(ctx, pieces)
            _probe(ctx, pieces[0], 0, size_arg, found, "split sizes are written in the code")
            return
        if found:
            _tie_equal(ctx, pieces)
            for module, attr in found:
                ctx.attr_fix(module, attr, pieces[0])
            return
    if isinstance(size_arg, (list, tuple)) and ctx.c.is_channel_like(ctx.v(x, dim)) \
            and split_sizes_attr(ctx, pieces, size_arg):
        return
    depends_on_width(ctx, [ctx.v(x, dim)], dim, "split sizes are written in the code")


def _tie_equal(ctx: RuleContext, pieces: list) -> None:
    n = ctx.c.sizes[pieces[0]]
    for p in pieces[1:]:
        ctx.rel(pieces[0], p, np.arange(n), np.arange(n))


@reads_sizes
@register(operator.getitem, aten.slice, aten.select, aten.unsqueeze_copy)
def getitem(ctx: RuleContext) -> None:
    src = ctx.arg(0)
    src_shape = ctx.traced.info[src.name].shape if isinstance(src, fx.Node) else None
    if ctx.node.target in (aten.slice.Tensor, aten.select.int):
        return _aten_slice(ctx, src)
    idx = ctx.arg(1)
    if isinstance(src_shape, list):  # an element (or slice) of a tuple of tensors
        if isinstance(idx, int) and ctx.out_shape is not None:
            for d in range(len(ctx.out_shape)):
                ctx.eq(ctx.v((src, idx % len(src_shape)), d), ctx.out(d))
        elif isinstance(idx, int) and isinstance(src_shape[idx], list):  # a nested tuple: (h_n, c_n)
            for j, s in enumerate(src_shape[idx]):  # "src#idx#j", if the producing rule named it
                for d in range(len(s) if isinstance(s, torch.Size) else 0):
                    inner = ("v", f"{src.name}#{idx % len(src_shape)}#{j}", d)
                    if inner in ctx.c.sizes:  # else left untouched: frozen as tied to no parameter
                        ctx.eq(inner, ctx.out(d, j))
        elif isinstance(idx, slice):  # y.split(8, 1)[::-1]: element i is the source's element j
            for i, j in enumerate(range(len(src_shape))[idx]):
                if ctx.shape((src, j)) is not None:
                    for d in range(len(ctx.shape((src, j)))):
                        ctx.eq(ctx.v((src, j), d), ctx.out(d, i))
        return
    if not isinstance(src_shape, torch.Size) or ctx.out_shape is None:
        return
    _tensor_index(ctx, src, idx if isinstance(idx, tuple) else (idx,))


def _advanced(ctx: RuleContext, it) -> bool:
    """An index that picks positions (a tensor, a list): it names positions of the full width."""
    return isinstance(it, (list, tuple, torch.Tensor)) or ctx.shape(it) is not None


def _tensor_index(ctx: RuleContext, x, items: tuple) -> None:
    xs = ctx.shape(x)
    if any(_advanced(ctx, it) for it in items):
        return _index_positions(ctx, x, items)
    n_real = sum(1 for it in items if it is not None and it is not Ellipsis)
    expanded = []
    for it in items:
        if it is Ellipsis:
            expanded.extend([slice(None)] * (len(xs) - n_real))
        else:
            expanded.append(it)
    expanded.extend([slice(None)] * (len(xs) - sum(1 for it in expanded if it is not None)))
    i = o = 0
    for it in expanded:
        if it is None:
            o += 1
        elif isinstance(it, slice):
            start, stop, step = (ctx.value(v) for v in (it.start, it.stop, it.step))
            rng = range(xs[i])[slice(start, stop, step)]
            a, b = ctx.v(x, i), ctx.out(o)
            if len(rng) == xs[i] and (len(rng) < 2 or rng.step == 1):
                ctx.eq(a, b)  # a literal bound past the end clamps: the whole dim at any width
                if isinstance(it.stop, fx.Node):
                    follow_size(ctx, a, it.stop)  # y[:, :z.size(1)] stays whole only while z is as wide
            else:  # the bounds are written in the code: they cannot follow pruning
                bounds = ":".join("" if v is None else str(v) for v in (start, stop))
                bounds += "" if step is None else f":{step}"
                depends_on_width(ctx, [a, b], i, f"sliced with fixed bounds [{bounds}]")
            i += 1
            o += 1
        else:  # an integer drops the dim
            depends_on_width(ctx, [ctx.v(x, i)], i, f"selects position {ctx.value(it)}")
            i += 1


def _index_positions(ctx: RuleContext, x, items: tuple) -> None:
    """Advanced indexing: by index tensors and whole dims only (``x[:, idx]``), as ``aten.index``
    does; otherwise the dims indexed by positions are frozen here, the rest by default."""
    xs = ctx.shape(x)
    whole = [it for it in items if not (isinstance(it, slice) and it == slice(None)) and it is not Ellipsis]
    if items.count(Ellipsis) <= 1 and all(isinstance(it, fx.Node) and ctx.shape(it) is not None for it in whole):
        at = items.index(Ellipsis) if Ellipsis in items else len(items)
        flat = list(items[:at]) + [slice(None)] * (len(xs) - len(items) + (at < len(items))) + list(items[at + 1:])
        return couple_index(ctx, x, [it if isinstance(it, fx.Node) else None for it in flat])
    n_real = sum(1 for it in items if it is not None and it is not Ellipsis)
    i = 0
    for it in items:
        if it is Ellipsis:
            i += len(xs) - n_real
        elif it is not None:
            if _advanced(ctx, it) and i < len(xs):
                depends_on_width(ctx, [ctx.v(x, i)], i, "indexed by positions of the full width")
            i += 1


def _aten_slice(ctx: RuleContext, x) -> None:
    xs = ctx.shape(x)
    dim = ctx.arg(1, "dim", 0) % len(xs)
    if ctx.node.target == aten.select.int:
        for d in range(len(xs)):
            if d != dim:
                ctx.eq(ctx.v(x, d), ctx.out(d if d < dim else d - 1))
        if not ctx.node.users and ctx.arg(2, "index") in (0, -1):
            ctx.touched.add(ctx.v(x, dim))  # read for its shape only (BART's `x[:, :, -1]`): 0 and -1 always exist
            return
        depends_on_width(ctx, [ctx.v(x, dim)], dim, f"selects position {ctx.arg(2, 'index')}")
        return
    start, end, step = ctx.arg(2, "start", None), ctx.arg(3, "end", None), ctx.arg(4, "step", 1)
    items = [slice(None)] * len(xs)
    items[dim] = slice(start, end, step)
    _tensor_index(ctx, x, tuple(items))


# -- regrouping ------------------------------------------------------------------------------------------
def factor_groups(a: tuple, b: tuple) -> list[tuple[list[int], list[int]]] | None:
    """Pair up runs of dims of ``a`` and ``b`` with equal products, ignoring size-1 dims."""
    ia = [k for k, s in enumerate(a) if s != 1]
    ib = [k for k, s in enumerate(b) if s != 1]
    groups, i, j = [], 0, 0
    while i < len(ia) and j < len(ib):
        ga, gb, pa, pb = [ia[i]], [ib[j]], a[ia[i]], b[ib[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(ia):
                ga.append(ia[i]); pa *= a[ia[i]]; i += 1  # noqa: E702
            elif pb < pa and j < len(ib):
                gb.append(ib[j]); pb *= b[ib[j]]; j += 1  # noqa: E702
            else:
                return None
        groups.append((ga, gb))
    return groups if i == len(ia) and j == len(ib) else None


def _strides(shape: list[int]) -> list[int]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return list(reversed(out))


def regroup(ctx: RuleContext, x, literal_spec: list | None = None, first: int = 0) -> None:
    """Tie the dims of ``x`` to the output's after a view/reshape/flatten/unflatten/squeeze.

    When a channel dim is split into factors (heads x head_dim, groups x channels) one factor
    carries the units and the others are frozen: the factor the code leaves to ``-1`` (it is
    written to vary, as heads in ``view(b, t, -1, head_dim)``), else the largest (on a tie the
    innermost). When factors are merged (C x H x W into a linear layer) the channel-like factor
    carries them.
    """
    xs, os_ = ctx.shape(x), ctx.out_shape
    groups = factor_groups(xs, os_)
    if groups is None:
        return
    for gi, go in groups:
        if len(gi) == 1 and len(go) == 1:
            ctx.eq(ctx.v(x, gi[0]), ctx.out(go[0]))
            continue
        if len(gi) > 1 and len(go) > 1:
            _regroup_many(ctx, x, gi, go)  # (N, H*d) -> (N*H, d), as MultiheadAttention does
            continue
        if len(gi) == 1:  # split
            whole, parts = ctx.v(x, gi[0]), [ctx.out(d) for d in go]
            if not ctx.c.is_channel_like(whole):
                continue
            sizes = [ctx.c.sizes[p] for p in parts]
            inferred = [t for t, d in enumerate(go) if literal_spec is not None
                        and len(literal_spec) == len(os_) and literal_spec[d] == -1]
            k = inferred[0] if inferred else max(range(len(parts)), key=lambda t: (sizes[t], t))
        else:  # merge
            whole, parts = ctx.out(go[0]), [ctx.v(x, d) for d in gi]
            like = [t for t, p in enumerate(parts) if ctx.c.is_channel_like(p)]
            if not like:
                continue
            sizes = [ctx.c.sizes[p] for p in parts]
            k = max(like, key=lambda t: (sizes[t], t))
        stride = _strides(sizes)[k]
        n = ctx.c.sizes[whole]
        ctx.rel(whole, parts[k], np.arange(n), (np.arange(n) // stride) % sizes[k])
        others = int(np.prod(sizes)) // sizes[k]
        if len(gi) == 1:
            ctx.splits[parts[k]] = (whole, others)
            ctx.c.splits.append((whole, parts[k], others))
        else:
            ctx.merges[whole] = (parts[k], others)
        for t, p in enumerate(parts):
            if t != k:
                ctx.freeze(p, "factor of a reshape that keeps its size")
    if literal_spec is not None and len(literal_spec) == len(os_):
        _check_sizes(ctx, literal_spec, first=first)


def _atoms(a: list[int], b: list[int]) -> list[tuple[int, int, int]] | None:
    """The common refinement of two row-major factorisations of one size: ``(size, dim of a,
    dim of b)`` per atom, or None when the dims do not nest (a 6 against a 4)."""
    atoms, i, j = [], 0, 0
    ra, rb = a[0], b[0]
    while True:
        if ra % rb and rb % ra:
            return None
        size = min(ra, rb)
        atoms.append((size, i, j))
        ra, rb = ra // size, rb // size
        if ra == 1:
            i += 1
            ra = a[i] if i < len(a) else 1
        if rb == 1:
            j += 1
            rb = b[j] if j < len(b) else 1
        if i == len(a) and j == len(b):
            return atoms
        if i == len(a) or j == len(b):
            return None


def _regroup_many(ctx: RuleContext, x, gi: list[int], go: list[int]) -> None:
    """Several dims regrouped into several: an input channel dim whose innermost factor becomes
    an output dim of its own carries its units through it (head_dim positions when heads are
    folded into the batch); every other factor keeps its size."""
    xs, os_ = ctx.shape(x), ctx.out_shape
    atoms = _atoms([xs[d] for d in gi], [os_[d] for d in go])
    if atoms is None:
        return
    for k, d in enumerate(gi):
        mine = [(size, jb) for size, ia, jb in atoms if ia == k]
        whole = ctx.v(x, d)
        size, jb = mine[-1]
        alone = [a for a in atoms if a[2] == jb]
        if len(mine) < 2 or len(alone) != 1 or not ctx.c.is_channel_like(whole):
            continue
        n = xs[d]
        ctx.rel(whole, ctx.out(go[jb]), np.arange(n), np.arange(n) % size)
        for j in {jb2 for _, ia, jb2 in atoms if ia == k} - {jb}:
            ctx.freeze(ctx.out(go[j]), "factor of a reshape that keeps its size")


def _check_sizes(ctx: RuleContext, spec: list, what: str = "reshape", first: int = 0) -> None:
    """Sizes written into a reshape (or an expand) must follow pruning: fix the attribute they
    come from, tie them to the tensor they were read from, or freeze the dim. ``spec`` lines up
    with the output's dims; its entry d is entry ``d - first`` of :func:`size_spec`."""
    for d, item in enumerate(spec):
        key = ctx.out(d)
        if not ctx.c.is_channel_like(key) or key not in ctx.touched:
            continue
        if isinstance(item, int):
            if item == -1:
                continue
            # an int attribute as wide, and a tuple of all the sizes that forward read (MetaFormer's
            # ``scale.view(self.shape)`` beside its ``dim``): both follow the width
            found = _find_attr(ctx, item) + sizes_from_attr(ctx, size_spec(ctx.node), d - first)
            if ctx.traced.mode == "export":  # every size is a number there: ask the model
                _probe(ctx, key, d - first, item, found, f"{what} hard-codes width {item}")
            elif found:
                for module, attr, *index in found:  # (module, attr, i): entry i of a tuple attribute
                    ctx.attr_fix(module, attr, key, index=index[0] if index else None)
            else:
                depends_on_width(ctx, [key], d, f"{what} hard-codes width {item}")
        elif isinstance(item, fx.Node):
            ref = ctx.size_refs.get(item.name)
            if isinstance(ref, tuple) and ref[0] == "div" and key in ctx.splits:
                (t, dim), k = ref[1], ref[2]
                whole, others = ctx.splits[key]
                if k == others and ctx.c.uf.find(ctx.v(t, dim)) == ctx.c.uf.find(whole):
                    continue  # width // groups of the very dim being split: follows pruning
                earlier = _split_carrier(ctx, ctx.v(t, dim), k, ctx.c.sizes[key])
                if earlier is not None:  # width // radix of a dim split the same way before
                    n = ctx.c.sizes[key]
                    ctx.rel(key, earlier, np.arange(n), np.arange(n))
                    continue
            if isinstance(ref, tuple) and isinstance(ref[0], fx.Node) and key in ctx.merges \
                    and _undoes_split(ctx, key, ctx.v(ref[0], ref[1])):
                continue  # merging back to the width of the dim that was split: follows pruning
            if isinstance(ref, tuple) and isinstance(ref[0], fx.Node) and ctx.shape(ref[0]) is not None:
                src = ctx.v(ref[0], ref[1])
                if ctx.c.sizes[src] == ctx.c.sizes[key]:
                    n = ctx.c.sizes[key]
                    ctx.rel(key, src, np.arange(n), np.arange(n))
                    continue
            ctx.freeze(key, "reshape size computed from other widths")
            if isinstance(ref, tuple) and ref[0] == "div":
                ref = {ref[1]}
            for t, dim in (ref if isinstance(ref, set) else ()):
                if ctx.shape(t) is not None:
                    ctx.freeze(ctx.v(t, dim), "its width is used in arithmetic for a reshape")


def _probe(ctx: RuleContext, key, pos: int, value: int, candidates, reason: str) -> None:
    """Freeze ``key`` for now and leave a question for :mod:`surgeon.analysis.probe`: does argument
    ``pos`` of this node follow the width of ``key`` (with ``candidates``, attributes that hold
    the same number, updated too)?"""
    ctx.freeze(key, reason)
    ctx.c.probes.setdefault(key, []).append((ctx.node.name, pos, value, tuple(candidates)))


def _split_carrier(ctx: RuleContext, whole, others: int, size: int):
    """The carrier of an earlier split of ``whole``'s class into ``others`` x ``size`` (split
    attention reshapes a conv's output and its attention weights to ``radix x C`` alike)."""
    find = ctx.c.uf.find
    return next((c for w, c, o in ctx.c.splits if find(w) == find(whole) and o == others
                 and ctx.c.sizes[c] == size), None)


def _undoes_split(ctx: RuleContext, merged, source) -> bool:
    """Is ``merged`` a merge whose carrier and other factors are those of an earlier split of a
    dim in ``source``'s class? Then both widths are ``others x kept(carrier)``."""
    carrier, others = ctx.merges[merged]
    find = ctx.c.uf.find
    return any(find(c) == find(carrier) and find(w) == find(source) and o == others
               for w, c, o in ctx.c.splits)


# call target (an ATen overload packet) -> position of the sizes it is called with, for ops whose
# sizes are not all of their arguments after the tensor (``aten.zeros(size)``,
# ``aten.layer_norm(x, normalized_shape, ...)``); the rules of such ops add them
SIZE_ARG: dict = {}


def size_spec(node: fx.Node) -> list:
    """The sizes a view/reshape (or a split's size and dim) node is called with, flattened; for
    ``unflatten(dim, sizes)``, the sizes; for the ops of :data:`SIZE_ARG`, their size argument."""
    at = SIZE_ARG.get(getattr(node.target, "overloadpacket", None))
    if at is not None:
        sizes = node.args[at] if len(node.args) > at else None
        return list(sizes) if isinstance(sizes, (list, tuple)) else [sizes]
    if _is_unflatten(node):
        sizes = node.kwargs.get("sizes", node.args[2] if len(node.args) > 2 else None)
        return list(sizes) if isinstance(sizes, (list, tuple)) else []
    rest = list(node.args[1:])
    if "shape" in node.kwargs:
        rest = [node.kwargs["shape"]]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        rest = list(rest[0])
    return rest


@reads_sizes
@register("method:view", "method:reshape", torch.reshape, aten.view, aten.reshape, aten._unsafe_view)
def view(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    rest = size_spec(ctx.node)
    if len(rest) == 1 and isinstance(rest[0], torch.dtype):
        return  # x.view(dtype)
    regroup(ctx, x, rest)


@register(torch.flatten, "method:flatten", nn.Flatten, torch.squeeze, torch.unsqueeze, "method:squeeze",
          "method:unsqueeze", aten.flatten, aten.squeeze,
          aten.unsqueeze, torch.ravel, "method:ravel", aten.squeeze_copy, aten.view_copy)
def regroup_only(ctx: RuleContext) -> None:
    regroup(ctx, ctx.arg(0))


@reads_sizes
@register(nn.Unflatten, "method:unflatten", torch.unflatten, aten.unflatten)
def unflatten(ctx: RuleContext) -> None:
    """``unflatten(dim, sizes)`` is a view whose sizes are written for one dim: checked like a
    reshape's (``(4, -1)`` follows pruning, a literal ``(4, 4)`` freezes the channels)."""
    x = ctx.arg(0)
    if ctx.module is not None:
        dim, sizes = ctx.module.dim, ctx.module.unflattened_size
    else:
        dim, sizes = ctx.arg(1, "dim"), ctx.arg(2, "sizes")
    nd = len(ctx.shape(x))
    if not isinstance(dim, int) or not isinstance(sizes, (list, tuple, torch.Size)):
        return regroup(ctx, x)  # sizes computed as a whole at run time
    dim %= nd
    regroup(ctx, x, [None] * dim + list(sizes) + [None] * (nd - dim - 1), first=dim)


def _is_unflatten(node: fx.Node) -> bool:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return node.op != "call_module" and target.split(".")[0] == "unflatten"


def _permutation(ctx: RuleContext, n: int) -> list[int] | None:
    target = getattr(ctx.node.target, "overloadpacket", ctx.node.target)  # aten.t.default -> aten.t
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if isinstance(ctx.module, nn.Module) and hasattr(ctx.module, "dims"):
        return [d % n for d in ctx.module.dims]
    args = list(ctx.node.args[1:])
    if "permute" in name:
        dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        dims = ctx.node.kwargs.get("dims", dims)
        return [d % n for d in dims]
    if name in ("t", "method:t"):
        return [1, 0] if n == 2 else list(range(n))
    if "movedim" in name or "moveaxis" in name:
        src, dst = args[0], args[1]
        src, dst = ([src], [dst]) if isinstance(src, int) else (list(src), list(dst))
        src, dst = [s % n for s in src], [d % n for d in dst]
        order = [d for d in range(n) if d not in src]
        perm = [None] * n
        for s, d in zip(src, dst):
            perm[d] = s
        it = iter(order)
        return [p if p is not None else next(it) for p in perm]
    d0 = ctx.arg(1, "dim0")
    d1 = ctx.arg(2, "dim1")
    perm = list(range(n))
    perm[d0 % n], perm[d1 % n] = perm[d1 % n], perm[d0 % n]
    return perm


@register(torch.permute, "method:permute", torch.transpose, "method:transpose", torch.swapaxes,
          "method:swapaxes", torch.swapdims, "method:swapdims", "method:t", torch.t, torch.movedim,
          "method:movedim", torch.moveaxis, aten.permute, aten.transpose, aten.t)
def permute(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    n = len(ctx.shape(x))
    perm = _permutation(ctx, n)
    for o, i in enumerate(perm):
        ctx.eq(ctx.v(x, i), ctx.out(o))


@reads_sizes
@register("method:expand", torch.broadcast_to, "method:broadcast_to", aten.expand)
def expand(ctx: RuleContext) -> None:
    """Broadcast; a size written for a dim that is not broadcast must follow its width (an
    ``expand(1, 16, h, w)`` of a pruned 16-channel tensor fails)."""
    ctx.broadcast([ctx.arg(0)], ctx.node)
    if ctx.traced.mode != "fx":
        return  # an exported expand writes every size as a number, the computed ones too
    spec = size_spec(ctx.node)
    if len(spec) == len(ctx.out_shape) and not any(ctx.shape(s) is not None for s in spec):
        _check_sizes(ctx, spec, "expand")


@register(F.pad, aten.pad, aten.constant_pad_nd)
def pad(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    for d, (a, b) in enumerate(zip(ctx.shape(x), ctx.out_shape)):
        if a == b:
            ctx.eq(ctx.v(x, d), ctx.out(d))


# -- shuffles ------------------------------------------------------------------------------------------
def _batch_dims(ctx: RuleContext, x, upto: int) -> None:
    for d in range(upto):
        ctx.eq(ctx.v(x, d), ctx.out(d))


@register(nn.PixelShuffle, F.pixel_shuffle, aten.pixel_shuffle)
def pixel_shuffle(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    cd = len(ctx.shape(x)) - 3
    r = ctx.module.upscale_factor if ctx.module is not None else ctx.arg(1)
    _batch_dims(ctx, x, cd)
    ctx.blocks(ctx.v(x, cd), ctx.out(cd), r * r)


@register(nn.PixelUnshuffle, F.pixel_unshuffle, aten.pixel_unshuffle)
def pixel_unshuffle(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    cd = len(ctx.shape(x)) - 3
    r = ctx.module.downscale_factor if ctx.module is not None else ctx.arg(1)
    _batch_dims(ctx, x, cd)
    ctx.blocks(ctx.out(cd), ctx.v(x, cd), r * r)


@register(nn.ChannelShuffle, F.channel_shuffle, torch.channel_shuffle, torch.native_channel_shuffle,
          aten.channel_shuffle, aten.native_channel_shuffle)
def channel_shuffle(ctx: RuleContext) -> None:
    """Input channel k*(C/g)+j lands at output j*g+k; unit j takes position j of every group."""
    x = ctx.arg(0)
    g = ctx.module.groups if ctx.module is not None else ctx.arg(1, "groups")
    _batch_dims(ctx, x, 1)
    for d in range(2, len(ctx.shape(x))):
        ctx.eq(ctx.v(x, d), ctx.out(d))
    c = ctx.shape(x)[1]
    slot = ctx.virtual("shuffle", c // g)
    ctx.slots(ctx.v(x, 1), slot, c // g)
    ctx.blocks(ctx.out(1), slot, g)
