"""Pictures of the pruning groups: one self-contained HTML page, or Graphviz DOT.

>>> import os, tempfile, torch, surgeon
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3))
>>> path = surgeon.visualize(net, torch.randn(1, 3, 16, 16), os.path.join(tempfile.mkdtemp(), "g.html"))
>>> text = path.read_text()
>>> "<script src" in text, "<link" in text, '"prunable":' in text
(False, False, True)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from .._atomic import write_text
from ..analysis import Analysis, analyze
from ..criteria import checked_scores, get_criterion
from ..planning.plan import Plan
from .dot import to_dot
from .graphdata import graph_data
from .html import page
from .targets import TARGETS, target_plans

__all__ = ["visualize", "graph_data", "to_dot", "page", "target_plans", "TARGETS"]


def visualize(model: nn.Module, example_input: Any, path: str | os.PathLike, plan: Plan | None = None, *,
              analysis: Analysis | None = None, criterion: str = "l2", max_nodes: int = 30,
              title: str | None = None, targets: tuple = TARGETS) -> Path:
    """Draw ``model``'s op graph with every pruning group in its own colour and write it to ``path``.

    The page (one HTML file, nothing fetched from the network) lays the op graph out top to
    bottom; a box's colour is the group its output channels belong to, small chips on it are the
    other groups it touches, grey boxes cannot be pruned (hover for the reason). Click a box or a
    chip for the group's members, units, share of FLOPs and parameters, unit scores (from
    ``criterion``) and, with ``plan``, what the plan keeps and removes. Search by module name,
    drag to pan, wheel to zoom. Graphs with more than ``max_nodes`` ops open on an overview
    folded by module (top-level blocks, a stack of identical blocks as one box; click a fold to
    open it), fitted to the window; capture machinery (export's checks, size arithmetic,
    device moves) is hidden unless asked for. A slider moves between plans for ``targets``
    (fractions of the FLOPs kept; planned once per target from one analysis, ``()`` for none)
    and shows which units of which groups go, the predicted FLOPs and parameters, and the
    groups kept whole with why and the fix. ``path`` ending in ``.dot``
    writes Graphviz DOT instead. Pass ``analysis`` to reuse a :func:`surgeon.analyze` result.

    >>> import os, tempfile, torch, surgeon
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    >>> out = surgeon.visualize(net, torch.randn(2, 8), os.path.join(tempfile.mkdtemp(), "net.dot"))
    >>> out.read_text().startswith("digraph")
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = Path(path)
    if not path.parent.exists():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    if plan is not None and not isinstance(plan, Plan):
        raise TypeError(f"plan must be a surgeon.Plan (or None), got {type(plan).__name__}")
    a = analysis or analyze(model, example_input)
    scores = checked_scores(get_criterion(criterion), model, list(a.groups))
    dot = path.suffix.lower() == ".dot"
    records = target_plans(model, example_input, a, targets, criterion) if targets and not dot else None
    data = graph_data(a, plan=plan, scores=scores, title=title or type(model).__name__, max_nodes=max_nodes,
                      targets=records)
    text = to_dot(data) if dot else page(data)
    write_text(path, text)  # atomic: a failed or interrupted write leaves any older picture whole
    return path
