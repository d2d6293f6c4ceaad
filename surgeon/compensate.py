"""Compensation without training: re-fit what consumes removed units so the output moves least.

After surgery, every Conv/Linear layer whose *input* channels were sliced (a *consumer*) sees
fewer inputs than it was trained on. :func:`compensate` changes the values of the shrunk model's
parameters and buffers, never their shapes, so the cost is exactly what the plan bought.

With calibration data (``data=``, an iterable of batches):

1. **Least-squares refit** of each consumer, in the order of the traced graph, so that later
   refits see earlier corrections (channel pruning by reconstruction, He et al. 2017; ThiNet).
   The consumer's kept weights (and its bias) are solved so that, on the *shrunk* model's own
   input to that layer, its output matches the *original* model's output of that layer on the
   same batch. Solved in float64 from accumulated normal equations, with a ridge that pulls
   towards the sliced original weights. Convolutions (2-d, zero padding, ``groups=1``) are fitted
   exactly on unfolded patches; other convolutions, and convs whose patch width passes
   ``max_dim``, use the channel-wise approximation (rebuild the original input channels as an
   affine map of the kept ones, per pixel, and fold that map into the weights). A fitted bias
   goes into the layer's bias, or, for a bias-free conv followed only by a BatchNorm, into that
   BatchNorm's running mean (FLAP-style bias compensation is the constant column of this fit).
2. **BatchNorm statistics** are re-estimated on the data (reset, cumulative average, every
   module put back in its own mode afterwards).

Without data, the closed form of Unified Data-Free Compression (Bai et al. 2023) is used: each
removed channel's producing weights (conv/linear rows with their BatchNorm folded in, across
every producer of a coupled group) are written as a ridge least-squares combination of the kept
channels' producing weights, and the consumer's column for the removed channel is folded into
the kept columns with those coefficients. This is exact for what is linear between producer and
consumer; it is an approximation across a nonlinearity (ReLU), which is why data, when there is
some, is used instead.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .analysis import Analysis, analyze
from .graph.trace import eval_mode, run_model
from .plan import Plan

__all__ = ["compensate", "recalibrate_bn", "batch_input", "dense_layers"]

_BN = nn.modules.batchnorm._BatchNorm


# -- which layers to refit -------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """A dense Conv/Linear module of the shrunk model, and how surgery sliced it."""

    name: str
    in_keep: tuple[int, ...]  # kept input indices, in the original numbering
    in_size: int
    out_keep: tuple[int, ...] | None  # kept output indices, None when the outputs are whole

    @property
    def sliced(self) -> bool:
        """Whether the layer reads fewer inputs than before (a consumer of removed units)."""
        return len(self.in_keep) < self.in_size


def _dense(mod: nn.Module) -> bool:
    """A layer whose weight is (out, in, ...) with every output reading every input."""
    if isinstance(mod, nn.Linear):
        return True
    return isinstance(mod, nn.modules.conv._ConvNd) and not mod.transposed and mod.groups == 1


def dense_layers(original: nn.Module, plan: Plan) -> list[Layer]:
    """Every dense layer of ``original`` with the input and output indices the plan keeps."""
    sl = {(s.tensor, s.dim): s for s in plan.slices}
    found = []
    for name, mod in original.named_modules():
        if not _dense(mod):
            continue
        n_in = mod.weight.shape[1]
        s_in = sl.get((name + ".weight", 1))
        s_out = sl.get((name + ".weight", 0))
        found.append(Layer(name, s_in.keep if s_in else tuple(range(n_in)), n_in,
                           s_out.keep if s_out else None))
    return found


def _graph_order(analysis: Analysis | None, names: list[str]) -> list[str]:
    """``names`` sorted by where their module is first used in the traced graph."""
    if analysis is None:
        return names
    first: dict[str, int] = {}
    for i, node in enumerate(analysis.traced.graph.nodes):
        if node.op == "call_module":
            first.setdefault(str(node.target), i)
        elif node.op == "get_attr":
            first.setdefault(str(node.target).rpartition(".")[0], i)
    pos = {n: k for k, n in enumerate(names)}
    return sorted(names, key=lambda n: (first.get(n, 1 << 30), pos[n]))


def _bn_after(analysis: Analysis | None, name: str, model: nn.Module) -> str | None:
    """The BatchNorm that is the only reader of module ``name``'s output, if there is one."""
    if analysis is None or analysis.traced.mode != "fx":
        return None
    for node in analysis.traced.graph.nodes:
        if node.op == "call_module" and node.target == name:
            users = list(node.users)
            if len(users) == 1 and users[0].op == "call_module":
                target = str(users[0].target)
                if isinstance(model.get_submodule(target), _BN):
                    return target
            return None
    return None


# -- data --------------------------------------------------------------------------------------
def batch_input(batch: Any) -> Any:
    """The model input of one calibration batch: a tensor, a dict of keyword arguments, or the
    first element of a tuple/list ``(inputs, targets, ...)`` (itself a tensor, tuple or dict)."""
    if isinstance(batch, (torch.Tensor, dict)):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    raise TypeError(f"a calibration batch must be a tensor, a dict of keyword arguments or a tuple "
                    f"(inputs, targets), got {type(batch).__name__}")


def _batches(data: Any, device: torch.device) -> list:
    if isinstance(data, (torch.Tensor, dict)):
        data = [data]  # one batch
    try:
        items = list(data)
    except TypeError:
        raise TypeError(f"data must be an iterable of batches (a DataLoader, a list of tensors or of "
                        f"(x, y) tuples), got {type(data).__name__}") from None
    if not items:
        raise ValueError("data is empty: pass at least one calibration batch")
    return [_to(batch_input(b), device) for b in items]


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


def _shape_of(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    if isinstance(x, dict):
        return {k: _shape_of(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [_shape_of(v) for v in x]
    return type(x).__name__


def _check_data(model: nn.Module, batches: list, example_input: Any, names: list[str]) -> dict[str, int]:
    """Run the model on the first batch (a clear error if it cannot) and count calls per layer."""
    calls = dict.fromkeys(names, 0)

    def hook(name):
        def fn(_mod, _args):
            calls[name] += 1
        return fn

    hooks = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with eval_mode(model), torch.no_grad():
            run_model(model, batches[0])
    except Exception as exc:  # noqa: BLE001 - re-raised with what to pass
        want = f" like example_input ({_shape_of(example_input)})" if example_input is not None else ""
        raise ValueError(
            f"compensate: the model fails on the first calibration batch, shaped {_shape_of(batches[0])} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); data must hold batches the model "
            f"accepts{want}: tensors, (inputs, targets) tuples or dicts of keyword arguments") from exc
    finally:
        for h in hooks:
            h.remove()
    return calls


class _Stop(Exception):
    """Raised by a hook once it has what it needs, to skip the rest of the forward."""


def _capture(model: nn.Module, name: str, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and output of module ``name`` when ``model`` runs on ``x`` (the rest is skipped)."""
    got = {}

    def hook(_mod, args, out):
        got["in"], got["out"] = args[0], out
        raise _Stop

    h = model.get_submodule(name).register_forward_hook(hook)
    try:
        run_model(model, x)
    except _Stop:
        pass
    finally:
        h.remove()
    if "in" not in got:
        raise RuntimeError(f"compensate: module '{name}' was not called on a calibration batch")
    return got["in"], got["out"]


# -- least-squares refit with data ------------------------------------------------------------------
@dataclass
class _Normal:
    """Normal equations of a linear least-squares fit, accumulated in float64 on two halves of
    the calibration data: ``fit`` and ``val`` (held out to choose the ridge)."""

    fit: list = field(default_factory=lambda: [None, None])
    val: list = field(default_factory=lambda: [None, None])

    def add(self, p: torch.Tensor, y: torch.Tensor, held_out: bool = False) -> None:
        p, y = p.double(), y.double()
        acc = self.val if held_out else self.fit
        for i, t in enumerate((p.T @ p, p.T @ y)):
            acc[i] = t if acc[i] is None else acc[i] + t

    def solve(self, prior: torch.Tensor, ridge: float) -> torch.Tensor:
        """argmin |P w - Y|^2 + lam |w - prior|^2 with lam = r * mean diagonal of P^T P, r chosen
        among ``ridge * 10**k`` (k = 0..5) by the error on the held-out half; ``prior`` itself
        when it does better there than every fit (too little data to beat what surgery left)."""
        prior = prior.double()
        if self.fit[0] is None:
            self.fit, self.val = self.val, [None, None]
        a, b = self.fit
        if self.val[0] is None:
            return self._solve(a, b, prior, ridge)
        av, bv = self.val
        best, best_err = None, self._err(prior, av, bv)
        for k in range(6):  # the held-out error is unimodal in practice: stop once it rises
            w = self._solve(a, b, prior, ridge * 10 ** k)
            err = self._err(w, av, bv)
            if err >= best_err:
                if best is not None:
                    break
                continue
            best, best_err = ridge * 10 ** k, err
        if best is None:
            return prior
        return self._solve(a + av, b + bv, prior, best)

    @staticmethod
    def _err(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
        """|P w - Y|^2 up to the constant |Y|^2, from the normal equations."""
        return float((w * (a @ w)).sum() - 2 * (w * b).sum())

    @staticmethod
    def _solve(a: torch.Tensor, b: torch.Tensor, prior: torch.Tensor, ridge: float) -> torch.Tensor:
        lam = ridge * float(a.diagonal().mean().clamp_min(1e-12))
        eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        chol, info = torch.linalg.cholesky_ex(a + lam * eye)
        if int(info) == 0:
            return torch.cholesky_solve(b + lam * prior, chol)
        return torch.linalg.solve(a + lam * eye, b + lam * prior)


def _rows(t: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """(N, C, *spatial) or (*, C) as rows of C features."""
    if t.dim() <= 2 or channel_dim == -1:
        return t.reshape(-1, t.shape[-1])
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def _ones(p: torch.Tensor) -> torch.Tensor:
    return torch.cat([p, p.new_ones(p.shape[0], 1)], dim=1)


def _unfoldable(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Conv2d) and mod.padding_mode == "zeros" and not isinstance(mod.padding, str)


def _patches(mod: nn.Conv2d, x: torch.Tensor, step: int) -> Iterable[torch.Tensor]:
    """Unfolded input patches as rows (N*L, C*kh*kw), a few images at a time."""
    for i in range(0, x.shape[0], step):
        p = F.unfold(x[i:i + step], mod.kernel_size, mod.dilation, mod.padding, mod.stride)
        yield p.transpose(1, 2).reshape(-1, p.shape[1])


def _refit_exact(mod: nn.Module, pairs, bias: bool, out_keep, ridge: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Solve the layer's weights on its real input rows (patches for a conv)."""
    w = mod.weight.detach()
    normal = _Normal()
    for x_small, y_orig, held_out in pairs:
        y = _rows(y_orig, -1 if isinstance(mod, nn.Linear) else 1)
        if out_keep is not None:
            y = y[:, list(out_keep)]
        if isinstance(mod, nn.Linear):
            chunks = [_rows(x_small, -1)]
        else:
            l_out = y_orig.shape[2] * y_orig.shape[3]
            step = max(1, (1 << 23) // max(1, l_out * w[0].numel()))
            chunks = _patches(mod, x_small, step)
        start = 0
        for p in chunks:
            normal.add(_ones(p) if bias else p, y[start:start + p.shape[0]], held_out)
            start += p.shape[0]
    flat = w.reshape(w.shape[0], -1).T  # (D, out)
    b0 = mod.bias.detach() if mod.bias is not None else w.new_zeros(w.shape[0])
    prior = torch.cat([flat, b0[None]], dim=0) if bias else flat
    sol = normal.solve(prior, ridge).to(w.dtype)
    new_w = sol[:flat.shape[0]].T.reshape(w.shape)
    return new_w, (sol[-1] if bias else None)


def _refit_channelwise(mod: nn.Module, pairs, c: Layer, bias: bool, w_orig: torch.Tensor,
                       ridge: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rebuild the original input channels as an affine map of the kept ones, per position, and
    fold the map into the original weights (approximate at zero-padded borders)."""
    normal = _Normal()
    for x_small, x_orig, held_out in pairs:
        p = _rows(x_small, -1 if isinstance(mod, nn.Linear) else 1)
        normal.add(_ones(p) if bias else p, _rows(x_orig, -1 if isinstance(mod, nn.Linear) else 1), held_out)
    k = len(c.in_keep)
    prior = torch.zeros(k + (1 if bias else 0), c.in_size, dtype=torch.float64, device=w_orig.device)
    prior[torch.arange(k), torch.as_tensor(c.in_keep)] = 1.0  # "keep the kept channels as they are"
    m = normal.solve(prior, ridge)  # (k [+1], in_size): x_orig ~ [x_small, 1] @ m
    w = w_orig.double()
    if c.out_keep is not None:
        w = w[list(c.out_keep)]
    new_w = torch.einsum("oi...,ki->ok...", w, m[:k]).to(w_orig.dtype)
    if not bias:
        return new_w, None
    shift = torch.einsum("oi...,i->o", w, m[k]).to(w_orig.dtype)
    return new_w, shift


def _refit_one(original: nn.Module, small: nn.Module, c: Layer, batches: list, bn: str | None,
               ridge: float, max_dim: int) -> bool:
    """Refit layer ``c`` of ``small`` if its input differs from the original's; True if done."""
    mod_o, mod_s = original.get_submodule(c.name), small.get_submodule(c.name)
    has_bias = mod_s.bias is not None or bn is not None
    exact = (isinstance(mod_s, nn.Linear) or _unfoldable(mod_s)) and \
        mod_s.weight[0].numel() + int(has_bias) <= max_dim
    if not exact and len(c.in_keep) + int(has_bias) > max_dim:
        return False  # too wide to solve: left as surgery sliced it
    pairs = []
    for x in batches:
        x_s, _ = _capture(small, c.name, x)
        x_o, y_o = _capture(original, c.name, x)
        if not pairs and not c.sliced and torch.equal(x_s, x_o):
            return False  # nothing upstream changed what this layer reads
        target = y_o if exact else x_o
        # every other sample is held out to choose the ridge (see _Normal.solve)
        pairs += [(x_s[0::2], target[0::2], False), (x_s[1::2], target[1::2], True)]
    if exact:
        new_w, new_b = _refit_exact(mod_s, pairs, has_bias, c.out_keep, ridge)
    else:
        new_w, shift = _refit_channelwise(mod_s, pairs, c, has_bias, mod_o.weight.detach(), ridge)
        new_b = None
        if shift is not None:
            b0 = mod_o.bias.detach() if mod_o.bias is not None else torch.zeros_like(shift)
            new_b = shift + (b0[list(c.out_keep)] if c.out_keep is not None else b0)
    with torch.no_grad():
        mod_s.weight.copy_(new_w)
        if new_b is not None:
            _set_bias(small, c.name, bn, new_b)
    return True


def _set_bias(small: nn.Module, name: str, bn: str | None, new_b: torch.Tensor) -> None:
    mod = small.get_submodule(name)
    if mod.bias is not None:
        mod.bias.copy_(new_b)
    elif bn is not None:
        norm = small.get_submodule(bn)
        if norm.running_mean is not None and norm.running_mean.shape == new_b.shape:
            norm.running_mean.sub_(new_b)  # BN(x + b) with mean mu is BN(x) with mean mu - b


def recalibrate_bn(model: nn.Module, data: Any, skip: Iterable[str] = ()) -> int:
    """Re-estimate the running statistics of every BatchNorm of ``model`` (but those named in
    ``skip``) on ``data``, batches as :func:`compensate` takes them (cumulative average). Other
    modules run in eval mode; every module gets its own mode and momentum back. Returns how many
    were re-estimated."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return _recalibrate(model, _batches(data, device), set(skip))


def _recalibrate(model: nn.Module, batches: list, skip: set[str]) -> int:
    norms = [m for n, m in model.named_modules()
             if isinstance(m, _BN) and m.track_running_stats and n not in skip]
    if not norms:
        return 0
    saved = [(m, m.momentum) for m in norms]
    with eval_mode(model), torch.no_grad():
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch weighs the same
            m.train()
        try:
            for x in batches:
                run_model(model, x)
        finally:
            for m, momentum in saved:
                m.momentum = momentum
    return len(norms)


def _inputs_of(model: nn.Module, names: list[str], x: Any) -> dict[str, torch.Tensor]:
    got: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_mod, args):
            got.setdefault(name, args[0])
        return fn

    hooks = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with _inference(model):
            run_model(model, x)
    finally:
        for h in hooks:
            h.remove()
    return got


def _unchanged_norms(original: nn.Module, small: nn.Module, plan: Plan, x: Any) -> set[str]:
    """BatchNorms of ``small`` whose input on ``x`` is the original's (on the kept channels)."""
    names = [n for n, m in small.named_modules() if isinstance(m, _BN)]
    keep = {s.tensor: s.keep for s in plan.slices if s.dim == 0}
    ins_o, ins_s = _inputs_of(original, names, x), _inputs_of(small, names, x)
    same = set()
    for n in names:
        if n not in ins_o or n not in ins_s:
            continue
        a, b = ins_o[n], ins_s[n]
        k = keep.get(n + ".running_mean")
        if k is not None:
            a = a.index_select(1, torch.as_tensor(k, device=a.device))
        if a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max())):
            same.add(n)
    return same


# -- data-free closed form (UDFC) -----------------------------------------------------------------
def _producer_rows(original: nn.Module, analysis: Analysis, group) -> torch.Tensor | None:
    """Per unit, the concatenated producing weights (BN folded) of every producer in the group;
    None when the group holds a member this closed form does not understand."""
    if group.reason is not None or not group.exact:
        return None
    feats = []
    for m in group.tensors:
        if len(m.unit_of) != group.n_units:
            return None  # units spanning several indices (heads): not handled here
        mod_name, _, leaf = m.name.rpartition(".")
        mod = original.get_submodule(mod_name) if mod_name else original
        if _dense(mod) and leaf == "weight" and m.dim == 1:
            continue  # a consumer
        if _dense(mod) and m.dim == 0 and leaf in ("weight", "bias"):
            if leaf == "bias":
                continue  # taken with its weight
            feats.append(_folded(original, analysis, mod_name, mod, m.unit_of))
        elif isinstance(mod, _BN) and m.dim == 0:
            continue  # folded into its producer
        else:
            return None
    if not feats:
        return None
    return torch.cat(feats, dim=1)


def _folded(original: nn.Module, analysis: Analysis, name: str, mod: nn.Module,
            unit_of: np.ndarray) -> torch.Tensor:
    """Rows (per unit) of a producer's weight and bias with a following BatchNorm folded in."""
    w = mod.weight.detach().double().reshape(mod.weight.shape[0], -1)
    b = mod.bias.detach().double() if mod.bias is not None else w.new_zeros(w.shape[0])
    bn = _bn_after(analysis, name, original)
    if bn is not None:
        norm = original.get_submodule(bn)
        if norm.running_var is not None:
            scale = (norm.weight.detach().double() if norm.weight is not None else 1.0) / \
                torch.sqrt(norm.running_var.double() + norm.eps)
            shift = norm.bias.detach().double() if norm.bias is not None else 0.0
            b = (b - norm.running_mean.double()) * scale + shift
            w = w * scale[:, None]
    rows = torch.cat([w, b[:, None]], dim=1)
    order = np.argsort(unit_of)  # rows indexed by unit
    return rows[torch.as_tensor(order)]


def _udfc(original: nn.Module, small: nn.Module, plan: Plan, analysis: Analysis, ridge: float) -> int:
    """Fold each removed input column into the kept ones; returns how many layers changed."""
    keep_of = {(s.tensor, s.dim): s.keep for s in plan.slices}
    changed = 0
    for g in analysis.groups:
        cons = [m for m in g.tensors if m.dim == 1 and m.name.endswith(".weight")
                and _dense(original.get_submodule(m.name.rpartition(".")[0]))
                and (m.name, 1) in keep_of]
        if not cons:
            continue
        rows = _producer_rows(original, analysis, g)
        if rows is None:
            continue
        m0 = cons[0]
        kept_units = np.unique(m0.unit_of[list(keep_of[(m0.name, 1)])])
        gone = np.setdiff1d(np.arange(g.n_units), kept_units)
        if gone.size == 0:
            continue
        vk, vr = rows[torch.as_tensor(kept_units)], rows[torch.as_tensor(gone)]
        gram = vk @ vk.T
        lam = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
        s = torch.linalg.solve(gram + lam * torch.eye(len(kept_units), dtype=gram.dtype), vk @ vr.T).T
        for m in cons:
            _fold_columns(original, small, m, keep_of, kept_units, gone, s)
            changed += 1
    return changed


def _fold_columns(original, small, member, keep_of, kept_units, gone, s) -> None:
    """small.W[:, kept] += original.W[out_keep][:, removed] @ S (per kernel position)."""
    name = member.name.rpartition(".")[0]
    w = original.get_submodule(name).weight.detach().double()
    out_keep = keep_of.get((member.name, 0))
    if out_keep is not None:
        w = w[list(out_keep)]
    unit_of = member.unit_of
    col_of_unit = {int(u): i for i, u in enumerate(unit_of)}
    kept_cols = list(keep_of[(member.name, 1)])
    # s is (removed unit, kept unit); express it over this member's columns
    pos = {int(u): j for j, u in enumerate(kept_units)}
    s_cols = s[:, torch.as_tensor([pos[int(unit_of[c])] for c in kept_cols])]
    removed = w[:, torch.as_tensor([col_of_unit[int(u)] for u in gone])]
    delta = torch.einsum("or...,rk->ok...", removed, s_cols)
    target = small.get_submodule(name).weight
    with torch.no_grad():
        target.add_(delta.to(target.dtype))


# -- entry point ----------------------------------------------------------------------------------
def compensate(original: nn.Module, small: nn.Module, plan: Plan, analysis: Analysis | None = None,
               data: Any = None, example_input: Any = None, *, ridge: float = 1e-3,
               max_dim: int = 4096, bn_recalibrate: bool = True) -> nn.Module:
    """Re-fit ``small`` (``original`` after ``plan``) so its output moves least; in place.

    Only values change, never shapes: the FLOPs and parameter count stay those of the plan.
    ``original`` is read, never written. ``analysis`` (of ``original``) gives the graph order and
    which BatchNorm follows which layer; without it, ``example_input`` is used to build one.
    ``data`` is an iterable of calibration batches (tensors, ``(inputs, targets)`` tuples or dicts
    of keyword arguments), read into memory once; without it the data-free closed form is used.

    >>> import torch, surgeon
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    >>> x = torch.randn(64, 8)
    >>> small = surgeon.shrink(net, x, target=0.5, data=[x], compensate=True)
    >>> small[2].in_features < 32
    True
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a surgeon.Plan, got {type(plan).__name__}")
    if analysis is None and example_input is not None:
        analysis = analyze(original, example_input)
    if data is None:
        if analysis is None:
            raise ValueError("compensate without data needs the analysis or example_input")
        _udfc(original, small, plan, analysis, ridge)
        return small
    device = next((p.device for p in small.parameters()), torch.device("cpu"))
    batches = _batches(data, device)
    layers = {c.name: c for c in dense_layers(original, plan)}
    names = _graph_order(analysis, list(layers))
    calls = _check_data(original, batches, example_input, names)
    fitted_bns = []
    with _inference(original), _inference(small):
        for name in names:
            if calls[name] != 1:  # a layer called several times has no single input to match
                continue
            bn = _bn_after(analysis, name, original)
            if _refit_one(original, small, layers[name], batches, bn, ridge, max_dim) and bn:
                fitted_bns.append(bn)
    if bn_recalibrate:
        # a refitted layer reproduces the original pre-norm output, so its BatchNorm keeps the
        # original statistics; so does one whose input did not change; the others are re-estimated
        same = _unchanged_norms(original, small, plan, batches[0])
        _recalibrate(small, batches, set(fitted_bns) | same)
    return small


@contextlib.contextmanager
def _inference(model: nn.Module):
    with eval_mode(model), torch.no_grad():
        yield model
