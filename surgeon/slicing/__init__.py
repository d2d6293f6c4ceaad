"""The low-level slicing primitive shared by surgery and by analysis's trial cuts: a fast deep
copy, attribute fixers and :func:`slice_model`. It imports nothing above itself."""

from .edits import AttrUpdate, Modules, Slice, slice_model
from .fixers import FIXERS, NAMED_FIXERS, fixer_for, has_fixer, register_fixer

__all__ = ["AttrUpdate", "Modules", "Slice", "slice_model", "FIXERS", "NAMED_FIXERS", "fixer_for",
           "has_fixer", "register_fixer"]
