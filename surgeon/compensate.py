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
   exactly on unfolded patches; other dense convolutions (1-d, 3-d, reflect padding), and those
   whose patch width passes
   ``max_dim``, use the channel-wise approximation (rebuild the original input channels as an
   affine map of the kept ones, per pixel, and fold that map into the weights). A fitted bias
   goes into the layer's bias, or, for a bias-free conv followed only by a BatchNorm, into that
   BatchNorm's running mean (FLAP-style bias compensation is the constant column of this fit).
2. **BatchNorms whose producer could not be refitted** (depthwise and grouped convs, modules
   called twice) but whose input changed get their per-channel scale and shift refitted the same
   way, each channel keeping its values unless the fit does better on held-out samples
   (``norms="fit"``); ``norms="recalibrate"`` re-estimates their running statistics instead (reset,
   cumulative average, every module put back in its own mode), as EagleEye does. A BatchNorm fed
   by a refitted layer keeps the original statistics: its input already matches the original's.

The ridge of every fit is chosen on every other calibration sample, held out, and a layer keeps
what surgery left when no fit beats it there, so little data cannot make a layer worse on data
like it. Without data, :func:`surgeon.datafree.udfc` (Unified Data-Free Compression, Bai et al.
2023) folds each removed channel into the kept ones as a least-squares combination of their
producing weights: exact for what is linear between producer and consumer, an approximation
across a ReLU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .analysis import Analysis, analyze
from .graph.trace import eval_mode, run_model
from .datafree import RefitError, _dense, udfc
from .datafree import bn_after as _bn_after
from .planning.plan import Plan
from .criteria._data import DataError, _to, non_finite  # the same batch helpers the criteria use

__all__ = ["compensate", "recalibrate_bn", "batch_input", "dense_layers", "CalibrationError", "RefitError"]


class CalibrationError(DataError):
    """Calibration data, or an activation the refit reads, is not finite (NaN or inf)."""

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
    batches = [_to(batch_input(b), device) for b in items]
    for i, x in enumerate(batches):
        where = non_finite(x)
        if where is not None:
            raise CalibrationError(
                f"compensate: calibration batch {i} of data holds NaN or inf (in {where}); the refit "
                f"would write non-finite weights. Drop or clean that batch (e.g. torch.nan_to_num) "
                f"and pass finite data")
    return batches


def _check_finite(t: torch.Tensor, what: str, name: str, batch: int | None = None) -> None:
    """Refuse a non-finite activation the refit reads (``batch`` given) or a refit result."""
    if bool(torch.isfinite(t).all()):
        return
    if batch is not None:
        raise CalibrationError(
            f"compensate: {what} of module '{name}' on calibration batch {batch} holds NaN or inf, "
            f"though the batch is finite (an overflow, e.g. in float16, or non-finite weights); "
            f"refit in float32 (model.float()) or check the weights before compensate=True")
    raise RefitError(
        f"compensate: the refit of module '{name}' came out non-finite ({what}); nothing was written. "
        f"Refit in float32 (model.float()) if the model runs in float16, pass more varied calibration "
        f"batches, or shrink without compensate=True")


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


def _halves(i: int, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
    """Batch ``i`` split for fitting and for choosing the ridge: every other sample is held out
    (every other batch, when batches hold one sample)."""
    if x.shape[0] == 1:
        return [(x, y, i % 2 == 1)]
    return [(x[0::2], y[0::2], False), (x[1::2], y[1::2], True)]


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
    for i, x in enumerate(batches):
        x_s, _ = _capture(small, c.name, x)
        x_o, y_o = _capture(original, c.name, x)
        if not pairs and not c.sliced and torch.equal(x_s, x_o):
            return False  # nothing upstream changed what this layer reads
        _check_finite(x_s, "the input (in the shrunk model)", c.name, i)
        _check_finite(y_o if exact else x_o, "the output" if exact else "the input", c.name, i)
        pairs += _halves(i, x_s, y_o if exact else x_o)
    if exact:
        new_w, new_b = _refit_exact(mod_s, pairs, has_bias, c.out_keep, ridge)
    else:
        new_w, shift = _refit_channelwise(mod_s, pairs, c, has_bias, mod_o.weight.detach(), ridge)
        new_b = None
        if shift is not None:
            b0 = mod_o.bias.detach() if mod_o.bias is not None else torch.zeros_like(shift)
            new_b = shift + (b0[list(c.out_keep)] if c.out_keep is not None else b0)
    _check_finite(new_w, "weight", c.name)
    if new_b is not None:
        _check_finite(new_b, "bias", c.name)
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
    named = [(n, m) for n, m in model.named_modules()
             if isinstance(m, _BN) and m.track_running_stats and n not in skip]
    if not named:
        return 0
    norms = [m for _, m in named]
    saved = [(m, m.momentum) for m in norms]
    stats = [{k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None} for m in norms]
    with eval_mode(model), torch.no_grad():
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch weighs the same
            m.train()
        try:
            for x in batches:
                run_model(model, x)
            for name, m in named:  # an overflow in float16 would leave NaN statistics
                _check_finite(torch.cat([m.running_mean, m.running_var]), "re-estimated running statistics", name)
        except BaseException:
            for m, old in zip(norms, stats):  # a refusal leaves the statistics as they were
                for k, b in old.items():
                    getattr(m, k).copy_(b)
            raise
        finally:
            for m, momentum in saved:
                m.momentum = momentum
    return len(norms)


# -- per-channel refit of a BatchNorm whose producer could not be refitted ----------------------
_SUMS = ("n", "x", "y", "xx", "xy")


def _channel_sums(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    x, y = _rows(x).double(), _rows(y).double()
    return {"n": x.new_full((x.shape[1],), x.shape[0]), "x": x.sum(0), "y": y.sum(0),
            "xx": (x * x).sum(0), "xy": (x * y).sum(0)}


def _add_sums(acc: dict, new: dict) -> dict:
    return {k: acc[k] + new[k] for k in _SUMS} if acc else new


def _affine_fit(st: dict, a0: torch.Tensor, c0: torch.Tensor, lam: torch.Tensor):
    """Per channel argmin sum (a x + c - y)^2 + lam ((a - a0)^2 + (c - c0)^2)."""
    p, q, r = st["xx"] + lam, st["x"], st["n"] + lam
    u, v = st["xy"] + lam * a0, st["y"] + lam * c0
    det = p * r - q * q
    return (r * u - q * v) / det, (p * v - q * u) / det


def _affine_err(st: dict, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per channel sum (a x + c - y)^2 up to sum y^2."""
    return a * a * st["xx"] + 2 * a * c * st["x"] + c * c * st["n"] - 2 * a * st["xy"] - 2 * c * st["y"]


def _same_input(original: nn.Module, small: nn.Module, name: str, keep, x: Any) -> bool:
    """Whether module ``name`` reads, on the kept channels, what it reads in the original."""
    x_s, _ = _capture(small, name, x)
    x_o, _ = _capture(original, name, x)
    if keep is not None:
        x_o = x_o.index_select(1, torch.as_tensor(keep, device=x_o.device))
    return x_s.shape == x_o.shape and torch.equal(x_s, x_o)


def _fit_norm(original: nn.Module, small: nn.Module, name: str, keep, batches: list, ridge: float) -> bool:
    """Refit a BatchNorm's per-channel scale and shift so its output matches the original's, each
    channel keeping its current values unless a fit does better on held-out samples."""
    norm = small.get_submodule(name)
    if not norm.affine or norm.running_mean is None:
        return False
    fit, val = {}, {}
    for i, x in enumerate(batches):
        x_s, _ = _capture(small, name, x)
        _, y_o = _capture(original, name, x)
        _check_finite(x_s, "the input (in the shrunk model)", name, i)
        _check_finite(y_o, "the output", name, i)
        if keep is not None:
            y_o = y_o.index_select(1, torch.as_tensor(keep, device=y_o.device))
        for a, b, held_out in _halves(i, x_s, y_o):
            if held_out:
                val = _add_sums(val, _channel_sums(a, b))
            else:
                fit = _add_sums(fit, _channel_sums(a, b))
    std = torch.sqrt(norm.running_var.double() + norm.eps)
    a0 = norm.weight.detach().double() / std
    c0 = norm.bias.detach().double() - norm.running_mean.double() * a0
    scale = (fit["xx"] + fit["n"]) / 2
    grid = [ridge * 10 ** k for k in range(6)]
    if val:
        errs = torch.stack([_affine_err(val, a0, c0)] +
                           [_affine_err(val, *_affine_fit(fit, a0, c0, r * scale)) for r in grid])
        best = errs.argmin(0)  # per channel; 0 keeps the current scale and shift
        fit = _add_sums(fit, val)
        scale = (fit["xx"] + fit["n"]) / 2
    else:
        best = torch.ones_like(a0, dtype=torch.long)
    lam = torch.as_tensor([0.0] + grid, dtype=torch.float64, device=a0.device)[best] * scale
    a, c = _affine_fit(fit, a0, c0, lam)
    a, c = torch.where(best == 0, a0, a), torch.where(best == 0, c0, c)
    _check_finite(torch.cat([a, c]), "BatchNorm scale and shift", name)
    with torch.no_grad():  # y = a x + c with the running statistics left as they are
        norm.weight.copy_((a * std).to(norm.weight.dtype))
        norm.bias.copy_((c + a * norm.running_mean.double()).to(norm.bias.dtype))
    return True


# -- entry point ----------------------------------------------------------------------------------
def compensate(original: nn.Module, small: nn.Module, plan: Plan, analysis: Analysis | None = None,
               data: Any = None, example_input: Any = None, *, ridge: float = 1e-3,
               max_dim: int = 4096, norms: str = "fit") -> nn.Module:
    """Re-fit ``small`` (``original`` after ``plan``) so its output moves least; in place.

    Only values change, never shapes: the FLOPs and parameter count stay those of the plan.
    ``original`` is read, never written. ``analysis`` (of ``original``) gives the graph order and
    which BatchNorm follows which layer; without it, ``example_input`` is used to build one.
    ``data`` is an iterable of calibration batches (tensors, ``(inputs, targets)`` tuples or dicts
    of keyword arguments), read into memory once; without it the data-free closed form is used.
    ``norms`` says what happens to BatchNorms whose producer was not refitted (a depthwise or
    grouped conv, a layer called twice) but whose input changed: ``"fit"`` refits their
    per-channel scale and shift to the original outputs, ``"recalibrate"`` re-estimates their
    statistics on the data after the refits, ``"keep"`` leaves them.

    Non-finite values are refused, never written: a batch holding NaN or inf, or an activation
    a refit reads that is not finite, raises :class:`CalibrationError` (naming the batch and the
    module); a refit that comes out non-finite raises :class:`RefitError`. On any error ``small``
    gets every value back as it was (a copy is kept on the CPU while fitting).

    >>> import torch, surgeon
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    >>> x = torch.randn(64, 8)
    >>> small = surgeon.shrink(net, x, target=0.5, data=[x], compensate=True)
    >>> small[2].in_features < 32
    True
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a surgeon.Plan, got {type(plan).__name__}")
    if norms not in ("fit", "recalibrate", "keep"):
        raise ValueError(f"norms must be 'fit', 'recalibrate' or 'keep', got {norms!r}")
    if analysis is None and example_input is not None:
        analysis = analyze(original, example_input)
    if data is None:
        if analysis is None:
            raise ValueError("compensate without data needs the analysis or example_input")
        with _all_or_nothing(small):
            udfc(original, small, plan, analysis, ridge)
        return small
    device = next((p.device for p in small.parameters()), torch.device("cpu"))
    batches = _batches(data, device)
    layers = {c.name: c for c in dense_layers(original, plan)}
    bns = [n for n, m in original.named_modules() if isinstance(m, _BN)]
    names = _graph_order(analysis, list(layers) + bns)
    calls = _check_data(original, batches, example_input, names)
    keep = {s.tensor: s.keep for s in plan.slices if s.dim == 0}
    covered = set()  # BatchNorms fed by a refitted layer or an unchanged input keep their statistics
    with _all_or_nothing(small), _inference(original), _inference(small):
        for name in names:
            if calls[name] != 1:  # a module called several times has no single input to match
                continue
            if name in layers:
                bn = _bn_after(analysis, name, original)
                if _refit_one(original, small, layers[name], batches, bn, ridge, max_dim) and bn:
                    covered.add(bn)
            elif name not in covered:
                k = keep.get(name + ".running_mean")
                if _same_input(original, small, name, k, batches[0]):
                    covered.add(name)  # nothing upstream changed: its statistics still hold
                elif norms == "fit":
                    _fit_norm(original, small, name, k, batches, ridge)
        if norms == "recalibrate":
            _recalibrate(small, batches, covered)
    return small


@contextlib.contextmanager
def _all_or_nothing(small: nn.Module):
    """On an error (a refusal included), put back every value of ``small`` as it was: a refusal
    leaves no half-compensated model. The copy is kept on the CPU."""
    saved = {k: v.detach().to("cpu", copy=True) for k, v in small.state_dict().items()}
    try:
        yield small
    except BaseException:
        with torch.no_grad():
            for k, v in small.state_dict().items():
                v.copy_(saved[k])
        raise


@contextlib.contextmanager
def _inference(model: nn.Module):
    with eval_mode(model), torch.no_grad():
        yield model
