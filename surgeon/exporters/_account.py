"""Where every parameter of the model went in the file: the proof that the file is dense.

A dense export of a shrunk model holds exactly its parameters, except for what BatchNorm
folding changes and for modules the forward never runs:

    weights == params - folded - unused          (fp32 and fp16 files)

``folded`` is predicted from the model, not read off the file: a BatchNorm folded into the
conv or linear that feeds it takes its affine parameters (and the host's bias) with it and
leaves one fused bias on the host (none if that bias is all zero, which the optimizer drops);
a BatchNorm left in the graph brings its running statistics along as initializers. Which
BatchNorms stay is read off the file (a BatchNormalization node fed by the layer's tensors).
Anything else the optimizers removed (all-zero biases, say) shows up as ``eliminated``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["Accounting", "Watch", "watch", "account", "count_weights"]

# the file's weights: floating tensors, and the 8-bit ones quantization writes
_WEIGHT_TYPES = {1, 10, 11, 16, 2, 3}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16, UINT8, INT8
_HOSTS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization",
             "GroupNormalization", "InstanceNormalization", "PRelu", "ConvInteger", "MatMulInteger"}


@dataclass(frozen=True)
class Accounting:
    params: int  # parameters of the model (each shared tensor once)
    folded: int  # net parameters BatchNorm folding removed (negative if kept BNs add statistics)
    bn_folded: int  # BatchNorm layers folded away
    bn_kept: int  # BatchNorm layers still in the file as BatchNormalization nodes
    unused: int  # parameters the forward never reads (auxiliary heads in eval mode)
    eliminated: int  # what else the file lacks: params - folded - unused - weights of the fp32 file


@dataclass
class _BNSite:
    name: str
    bn: nn.Module
    host: nn.Module | None  # the conv / linear whose output this BatchNorm normalises


@dataclass
class Watch:
    """What one forward showed: which parameters it used and which conv or linear feeds each BatchNorm."""

    sites: list[_BNSite]
    used: set[int]  # ids of the parameters some operation read


class _Reads(TorchFunctionMode):
    """Notes every parameter passed to a torch function or tensor method (modules such as
    MultiheadAttention read their children's weights without calling those children)."""

    def __init__(self, params: dict[int, nn.Parameter], used: set[int]):
        super().__init__()
        self._params, self._used = params, used

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for v in tree_flatten((args, kwargs or {}))[0]:
            if id(v) in self._params:
                self._used.add(id(v))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def watch(model: nn.Module):
    """Record, during the forward run inside the ``with``, the parameters it reads and the
    producer of every BatchNorm's input (the same tensor object a conv or linear returned)."""
    names = {id(m): n for n, m in model.named_modules()}
    result = Watch([], set())
    produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # the tensor is kept so its id stays unique

    def pre(mod, inputs):
        if inputs and isinstance(inputs[0], torch.Tensor):
            host = produced.get(id(inputs[0]))
            result.sites.append(_BNSite(names[id(mod)], mod, host[0] if host else None))

    def post(mod, _inputs, out):
        if isinstance(out, torch.Tensor):
            produced[id(out)] = (mod, out)

    mods = list(model.modules())
    hooks = [m.register_forward_pre_hook(pre) for m in mods if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    hooks += [m.register_forward_hook(post) for m in mods if isinstance(m, _HOSTS)]
    try:
        with _Reads({id(p): p for p in model.parameters()}, result.used):
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
    """Parameters minus file elements that this BatchNorm's treatment accounts for."""
    c = site.bn.num_features
    own = _own_params(site.bn)
    if kept:
        return own - 4 * c  # scale, bias, mean and variance are all initializers
    if site.host is None:
        return own - 2 * c  # folded into a per-channel scale and shift
    host_bias = site.host.bias.numel() if site.host.bias is not None else 0
    return own + host_bias - (0 if _fused_bias_is_zero(site) else c)


def account(model: nn.Module, seen: Watch, fp32_file) -> Accounting:
    """Explain the fp32 file's weight count from the model and what its forward did."""
    params = {id(p): (n, p.numel()) for n, p in model.named_parameters()}
    total = sum(n for _, n in params.values())
    unused = sum(n for pid, (_, n) in params.items() if pid not in seen.used)
    in_bn = _bn_inputs(fp32_file)
    folded = kept = 0
    counted: set[int] = set()
    for site in seen.sites:
        if id(site.bn) in counted:  # a BatchNorm called twice is one set of weights
            continue
        counted.add(id(site.bn))
        is_kept = any(f"{site.name}.{t}" in in_bn for t in ("weight", "bias", "running_mean", "running_var"))
        kept += is_kept
        folded += _bn_change(site, is_kept)
    weights = count_weights(fp32_file, {n for n, _ in params.values()})
    return Accounting(total, folded, len(counted) - kept, kept, unused, total - folded - unused - weights)
