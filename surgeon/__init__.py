"""surgeon: graph-based structural surgery for PyTorch.

>>> import torch, surgeon
>>> net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
>>> small = surgeon.shrink(net, torch.randn(2, 16), target=0.5)
>>> small[0].out_features < 64, small[0].in_features
(True, 16)
"""

from . import criteria, exporters, verify
from .analysis import Analysis, analyze
from .api import apply, plan, shrink
from .errors import OffTargetWarning, PlanError, SurgeonError, SurgeonWarning, SurgeryError, TraceError
from .graph.groups import PruneGroup, UnitKind
from .graph.trace import trace
from .planning.plan import Plan
from .sharded import apply_checkpoint
from .recover import recover
from .search import search
from .viz import visualize

__all__ = [
    "shrink", "plan", "apply", "apply_checkpoint", "trace", "analyze", "verify", "criteria", "exporters", "visualize", "recover", "search",
    "Plan", "PruneGroup", "UnitKind", "Analysis",
    "SurgeonError", "TraceError", "SurgeryError", "PlanError", "SurgeonWarning", "OffTargetWarning",
]
__version__ = "0.1.0"
