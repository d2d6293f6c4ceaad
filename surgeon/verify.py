"""The oracles, callable by users: independent cost counters, output checks, zero-invariance.

>>> import torch, surgeon
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> count_flops(net, torch.randn(1, 8))
768
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .graph.flops import ensure_formulas
from .graph.run import flop_counter
from .graph.trace import FlopTally, eval_mode, no_fast_path, run_model, shapes_of

__all__ = ["count_flops", "measure", "count_params", "output_shapes", "max_rel_error", "zero_invariance",
           "first_tensor"]


def count_flops(model: nn.Module, example_input: Any) -> int:
    """FLOPs of one forward by ``torch.utils.flop_counter.FlopCounterMode`` (eval mode, autograd
    on so that fused inference fast paths, which the counter cannot see into, are not taken).
    Grouped matmuls (the routed experts of MoE models) are counted too (:func:`ensure_formulas`)."""
    ensure_formulas()
    with eval_mode(model), torch.enable_grad(), flop_counter() as counter:  # see flop_counter
        run_model(model, example_input)
    return int(counter.get_total_flops())


def measure(model: nn.Module, example_input: Any) -> tuple[int, Any]:
    """FLOPs and output shapes (as :func:`output_shapes`) in one run. The FLOPs use
    ``torch.utils.flop_counter``'s formulas, as :func:`count_flops` does, without its
    per-module bookkeeping, which costs more than the forward on deep models.

    The run is in eval mode without autograd (recording the graph costs a fifth of the run on
    deep models), with torch.nn's fused attention fast paths turned off explicitly (``count_flops``
    keeps them off by leaving autograd on): the same ops run, so the counts are the same."""
    ensure_formulas()
    with eval_mode(model), no_fast_path(), torch.no_grad(), FlopTally() as counter:
        out = run_model(model, example_input)
    return int(counter.count), shapes_of(out)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def output_shapes(model: nn.Module, example_input: Any) -> Any:
    """The nested structure of output shapes of ``model`` on ``example_input`` (eval mode)."""
    with eval_mode(model), torch.no_grad():
        return shapes_of(run_model(model, example_input))


def first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, dict):
        out = list(out.values())
    for o in out:
        try:
            return first_tensor(o)
        except (TypeError, StopIteration, ValueError):
            continue
    raise ValueError("no tensor in the model output")


def max_rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a| (a scale-aware error that does not blow up on near-zero entries)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def zero_invariance(model: nn.Module, example_input: Any, units: dict[int, Sequence[int]],
                    analysis=None) -> float:
    """Zero every parameter slice of ``units`` ({group id: unit indices}), then remove exactly
    those units; return the relative error between the two models' outputs.

    A correct index mapping gives ~1e-7; a wrong one almost always gives a large error.
    """
    from .analysis import analyze
    from .planning.planner import build_plan
    from .slicing.clone import clone_module
    from .surgery import apply

    a = analysis or analyze(model, example_input)
    by_id = {g.id: gi for gi, g in enumerate(a.groups)}
    keep = a.full_keep()
    # a plain copy: a no-op plan would write a config's implicit widths out (GPT-J's n_inner None
    # becomes 4 * n_embd), and the real plan below, made from the model as it is, expects None
    zeroed = clone_module(model)
    params = dict(zeroed.named_parameters())
    with torch.no_grad():
        for gid, us in units.items():
            gi = by_id[gid]
            g = a.groups[gi]
            keep[gi][np.asarray(us, dtype=np.int64)] = False
            for u in us if g.layers else ():
                for n, p in params.items():
                    if n.startswith(g.layers[u] + "."):
                        p.zero_()
            for m in g.tensors:
                if m.name in params:
                    idx = torch.as_tensor(g.unit_indices(m, us))
                    params[m.name].index_fill_(m.dim, idx, 0.0)
    plan = build_plan(a, keep, target=1.0, metric="flops", criterion="manual", round_to=None)
    pruned = apply(zeroed, plan)
    with eval_mode(zeroed), eval_mode(pruned), torch.no_grad():
        ref = first_tensor(run_model(zeroed, example_input))
        out = first_tensor(run_model(pruned, example_input))
    return max_rel_error(ref, out)

