"""torch-geometric, imported on demand (it is an optional extra)."""

from __future__ import annotations

import importlib

__all__ = ["require_pyg"]


def require_pyg():
    """``torch_geometric``, or an ImportError that says what to install."""
    try:
        return importlib.import_module("torch_geometric")
    except ImportError as exc:
        raise ImportError(
            "criterion='gnn' needs torch-geometric, which is not installed: "
            "pip install 'surgeon[gnn]' (or pip install torch-geometric)") from exc
