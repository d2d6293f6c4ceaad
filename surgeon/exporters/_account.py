"""Where every parameter of the model went in the file: the proof that the file is dense.

A dense export of a shrunk model holds exactly its parameters, up to what the exporter
precomputes and folds, and every term of that is predicted from one eager forward of the
model, not read off the file:

    weights == params - folded - unused + derived          (fp32 and fp16 files)

* ``folded``: a BatchNorm folded into the conv or linear that feeds it takes its affine
  parameters (and the host's bias) along and leaves one fused bias on the host (none if that
  bias is all zero, which the optimizer drops). Which BatchNorms stay in the graph is read off
  the file (a BatchNormalization node fed by the layer's tensors).
* ``unused``: parameters no operation reads (auxiliary heads in eval mode).
* ``derived``: tensors that are not parameters but that the file must hold, less the
  parameters absorbed into them (see :mod:`._lineage`): running statistics of BatchNorms left
  in the graph, relative-position biases gathered from their tables, attention masks.

Whatever the prediction misses shows up as ``eliminated`` (all-zero biases the optimizers
drop, for instance): it is 0 for models whose values are not degenerate.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._lineage import Lineage

__all__ = ["Accounting", "Watch", "watch", "account", "count_weights"]

# the file's weights: floating tensors, and the 8-bit ones quantization writes
_WEIGHT_TYPES = {1, 10, 11, 16, 2, 3}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16, UINT8, INT8
_HOSTS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization",
             "GroupNormalization", "InstanceNormalization", "PRelu", "ConvInteger", "MatMulInteger"}


@dataclass(frozen=True)
class Accounting:
    params: int  # parameters of the model (each shared tensor once)
    folded: int  # parameters BatchNorm folding removed, net of the biases it adds
    bn_folded: int  # BatchNorm layers folded away
    bn_kept: int  # BatchNorm layers still in the file as BatchNormalization nodes
    unused: int  # parameters the forward never reads (auxiliary heads in eval mode)
    derived: int  # non-parameter tensors the file holds, less the parameters absorbed into them
    eliminated: int  # params - folded - unused + derived - weights of the fp32 file


@dataclass
class _BNSite:
    name: str
    bn: nn.Module
    host: nn.Module | None  # the conv / linear whose output this BatchNorm normalises


@dataclass
class Watch:
    """What one forward showed: the tensors it fed to the input-dependent computation, and
    which conv or linear feeds each BatchNorm."""

    sites: list[_BNSite]
    lineage: Lineage


@contextlib.contextmanager
def watch(model: nn.Module, inputs: list[torch.Tensor]):
    """Record, during the forward run inside the ``with``, the lineage of every tensor
    (``inputs`` are the live ones) and the producer of every BatchNorm's input (the same tensor
    object a conv or linear returned)."""
    names = {id(m): n for n, m in model.named_modules()}
    owned = {id(t) for t in list(model.parameters()) + list(model.buffers())}
    result = Watch([], Lineage({id(p): p for p in model.parameters()}, owned))
    produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # the tensor is kept so its id stays unique

    def pre(mod, args):
        if args and isinstance(args[0], torch.Tensor):
            host = produced.get(id(args[0]))
            result.sites.append(_BNSite(names[id(mod)], mod, host[0] if host else None))

    def post(mod, _args, out):
        if isinstance(out, torch.Tensor):
            produced[id(out)] = (mod, out)

    mods = list(model.modules())
    hooks = [m.register_forward_pre_hook(pre) for m in mods if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    hooks += [m.register_forward_hook(post) for m in mods if isinstance(m, _HOSTS)]
    try:
        with result.lineage.mode(inputs):
            yield result
    finally:
        for h in hooks:
            h.remove()
        produced.clear()


def _tensors(model_proto):
    """Every tensor stored in the file: initializers and Constant nodes, subgraphs included."""
    import onnx

    graphs = [model_proto.graph]
    while graphs:
        g = graphs.pop()
        yield from g.initializer
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and node.op_type == "Constant":
                    yield attr.t
                graphs.extend(attr.graphs)
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)


def _weight_slots(model_proto) -> set[str]:
    """Names fed to the weight and bias inputs of the layers that hold parameters."""
    graphs, names = [model_proto.graph], set()
    while graphs:
        g = graphs.pop()
        for node in g.node:
            if node.op_type in _WEIGHTED:
                names.update(node.input[1:])
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.HasField("g") else [])
                graphs.extend(attr.graphs)
    return names


def count_weights(model_proto, param_names: set[str] = frozenset()) -> int:
    """Elements of the file's weight tensors. Integer tensors (shapes, indices) are operator
    arguments, not weights, and so are one-element constants (scales, epsilons) unless named
    after a parameter or fed to a layer's weight or bias (a layer pruned to width 1)."""
    slots = _weight_slots(model_proto)
    total = 0
    for t in _tensors(model_proto):
        n = int(np.prod(t.dims)) if t.dims else 1
        if t.data_type in _WEIGHT_TYPES and (n > 1 or t.name in param_names or t.name in slots):
            total += n
    return total


def _bn_inputs(model_proto) -> set[str]:
    return {name for node in model_proto.graph.node if node.op_type == "BatchNormalization"
            for name in node.input[1:]}


def _fused_bias_is_zero(site: _BNSite) -> bool:
    """Whether folding ``site`` into its host leaves an all-zero bias (so the optimizer drops it)."""
    bn, host = site.bn, site.host
    if bn.running_mean is None or bn.running_var is None:
        return False
    with torch.no_grad():
        scale = (bn.weight if bn.weight is not None else 1.0) / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias if bn.bias is not None else 0.0
        base = host.bias if host.bias is not None else 0.0
        return bool(((base - bn.running_mean) * scale + bias == 0).all())


def _own_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters(recurse=False))


def _bn_change(site: _BNSite, kept: bool) -> int:
    """Parameters that folding this BatchNorm removes, net of the bias it adds (0 if kept)."""
    if kept:
        return 0
    own, c = _own_params(site.bn), site.bn.num_features
    if site.host is None:
        return own - 2 * c  # folded into a per-channel scale and shift
    host_bias = site.host.bias.numel() if site.host.bias is not None else 0
    return own + host_bias - (0 if _fused_bias_is_zero(site) else c)


def _derived(lineage: Lineage, gone: set[int]) -> int:
    """Elements of the non-parameter tensors the file must hold (floating, more than one
    element, not among ``gone``), less the parameters absorbed into them. Equal tensors count
    once: the exporters store one constant for, say, the same attention mask of several blocks."""
    held: dict[tuple, int] = {}
    for key, f in lineage.frontier.items():
        if f.param is None and f.floating and f.numel > 1 and key not in gone:
            t = f.keep.detach().cpu().contiguous()
            digest = hashlib.sha1(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
            held[(str(t.dtype), tuple(t.shape), digest.hexdigest())] = f.numel
    return sum(held.values()) - sum(lineage.params[p].numel() for p in lineage.absorbed())


def account(model: nn.Module, seen: Watch, fp32_file) -> Accounting:
    """Explain the fp32 file's weight count from the model and what its forward did."""
    params = {id(p): (n, p.numel()) for n, p in model.named_parameters()}
    total = sum(n for _, n in params.values())
    unused = sum(n for pid, (_, n) in params.items() if pid not in seen.lineage.read)
    in_bn = _bn_inputs(fp32_file)
    folded = kept = 0
    counted: set[int] = set()
    gone: set[int] = set()  # running statistics of folded BatchNorms
    for site in seen.sites:
        if id(site.bn) in counted:  # a BatchNorm called twice is one set of weights
            continue
        counted.add(id(site.bn))
        is_kept = any(f"{site.name}.{t}" in in_bn for t in ("weight", "bias", "running_mean", "running_var"))
        kept += is_kept
        folded += _bn_change(site, is_kept)
        if not is_kept:
            gone.update(id(b) for b in (site.bn.running_mean, site.bn.running_var) if b is not None)
    derived = _derived(seen.lineage, gone)
    weights = count_weights(fp32_file, {n for n, _ in params.values()})
    return Accounting(total, folded, len(counted) - kept, kept, unused, derived,
                      total - folded - unused + derived - weights)
