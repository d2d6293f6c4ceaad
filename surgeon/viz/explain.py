"""Why a group stays whole, in plain words, and what the user can do about it.

>>> explain("the Hugging Face config cannot express this width (...); pass uniform=False to prune it anyway")[1]
'pass uniform=False to prune it anyway (the saved model then reloads through surgeon, not from_pretrained)'
"""

from __future__ import annotations

import re

__all__ = ["explain"]

# (pattern of a group's reason, the same in plain words, what the user can do)
_PLAIN: tuple[tuple[str, str, str], ...] = (
    (r"model output", "its channels are the model's output: removing one would change what the model returns",
     "nothing to do: outputs keep their width by design"),
    (r"model input", "its channels are the model's input", "nothing to do: inputs keep their width by design"),
    (r"vocabulary rows", "the vocabulary is kept: every token id must still have its embedding row",
     "nothing to do: the hidden size and the MLP/heads are pruned instead"),
    (r"config cannot express", "the model's config gives every layer the same number of heads, and this cut "
     "would make layers differ", "pass uniform=False to prune it anyway (the saved model then reloads through "
     "surgeon, not from_pretrained)"),
    (r"factor of a reshape", "this size is one factor of a reshape (like heads x head size); it is pruned "
     "through the other factor", "nothing to do: the heads or the other factor are pruned instead"),
    (r"only buffers", "it holds buffers only (no weights), so removing units saves nothing",
     "nothing to do"),
    (r"no parameter controls", "no weight decides these units, so removing them saves nothing", "nothing to do"),
    (r"single unit", "it has a single unit, and a layer cannot have zero", "nothing to do"),
    (r"ignore", "you asked to keep this module whole (ignore=...)", "remove it from ignore= to prune it"),
    (r"depends on the width|scale depends on head_dim", "an op reads this width as a number, so changing it "
     "would change the result", "rewrite the op to read the width from the tensor, or pass ignore=[that module]"),
    (r"kernel size|per-group width|arange makes positions", "a size the layer's structure fixes (kernel, "
     "per-group width, positions), not a channel count", "nothing to do"),
    (r"no (coupling )?rule|unknown op|not understood", "an op surgeon has no rule for touches these channels, "
     "so it keeps them rather than guess", "register a rule (surgeon.graph.rules) or pass ignore=[that module]"),
)


def explain(reason: str | None) -> tuple[str, str]:
    """(``reason`` in plain words, the fix); unknown reasons come back as they are."""
    text = str(reason or "")
    for pattern, plain, fix in _PLAIN:
        if re.search(pattern, text, re.I):
            return plain, fix
    return text or "kept whole", "see the group's reason; pass ignore= or uniform=False where it names them"
