"""Pause Python's cyclic garbage collector inside surgeon's own allocation-heavy loops.

Coupling, grouping and slicing allocate hundreds of thousands of small objects while the model
stays alive; each collection the allocations trigger walks them all again. Only loops that run
no user code are wrapped (never a model's ``forward``), and the collector's previous state is
restored on the way out, so cycles made meanwhile are collected as usual afterwards. Inside a
:func:`surgeon._walks.shared` block the objects the loop made are frozen on the way out, as the
model is (one collection of a fresh coupling's hundred thousand objects cost more than the loop's
own allocations); they are unfrozen, and collectable, when the block ends.
"""

from __future__ import annotations

import functools
import gc

from . import _walks

__all__ = ["own_loop"]


def own_loop(fn):
    """Decorate ``fn`` (which must call no user code) to run with the collector paused."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            _walks.settle()  # what the loop built survives it: no collection re-walks it (see settle)
            gc.enable()
    return run
