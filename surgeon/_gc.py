"""Pause Python's cyclic garbage collector inside surgeon's own allocation-heavy loops.

Coupling, grouping and slicing allocate hundreds of thousands of small objects while the model
stays alive; each collection the allocations trigger walks them all again. Only loops that run
no user code are wrapped (never a model's ``forward``), and the collector's previous state is
restored on the way out, so cycles made meanwhile are collected as usual afterwards.
"""

from __future__ import annotations

import functools
import gc

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
            gc.enable()
    return run
