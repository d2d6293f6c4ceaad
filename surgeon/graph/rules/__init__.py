"""Coupling rules: one small function per op family, looked up by module type or call target.

A rule receives a :class:`RuleContext` for one fx node and states how the node's input, output and
parameter dimensions are tied (see :mod:`surgeon.graph.ir`). Keys are

* a module class (``nn.Conv2d``) for ``call_module`` nodes, matched along the class's MRO,
* a callable (``torch.cat``, ``operator.add``, an ATen overload packet) for ``call_function``,
* ``"method:NAME"`` for ``call_method`` nodes (``x.view(...)``),
* ``"fn:module.qualname"`` for third-party functions, so their packages need not be imported.

Registering the same key twice is an error. A node with no rule is never guessed: every
dimension it touches is frozen with the reason, and the rest of the model is still pruned.
"""

from .base import RULES, RuleContext, describe_target, lookup, register  # noqa: F401
from . import conv, elementwise, linear, norm, shape, width, pooling, attention, torchvision_ops, moe, recurrent  # noqa: E402,F401
from . import aten_views, aten_creation, aten_index, aten_reduce, like  # noqa: E402,F401

__all__ = ["register", "lookup", "RuleContext", "RULES", "describe_target"]
