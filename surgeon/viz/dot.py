"""Graphviz DOT for people who render with their own tools (``dot -Tsvg groups.dot``)."""

from __future__ import annotations

from ._escape import css_color
from ._escape import dot_string as _q

__all__ = ["to_dot"]


def _tooltip(n: dict, groups: dict) -> str:
    head = f"{n['name']}: {n['type']}" + (f" in {n['path']}" if n["path"] else "")
    if n["group"] >= 0:
        g = groups[n["group"]]
        state = f"group {g['id']} ({g['kind']} x{g['units']}, {g['flops_share']:.1%} of FLOPs)"
    else:
        state = f"not prunable: {n['reason']}"
    extra = f"; also touches groups {', '.join(map(str, n['chips']))}" if n["chips"] else ""
    return f"{head}; {state}{extra}"


def to_dot(data: dict) -> str:
    """The op graph of :func:`surgeon.viz.graphdata.graph_data` as DOT: one box per op, filled
    with its group's colour (grey with the reason in the tooltip when it cannot be pruned),
    edges coloured by the group of the tensor they carry, and a legend of the groups."""
    groups = {g["id"]: g for g in data["groups"]}
    grey = css_color(data["grey"])  # colours are checked, not escaped: Graphviz crashes on a bad one
    # the title goes through _q too: a raw line break would end the comment and start a statement
    out = [f"digraph surgeon {{  // {_q(data['title'])}: {int(data['totals']['prunable'])} prunable groups",
           "  rankdir=LR;",
           '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
           "  edge [arrowsize=0.6];"]
    for n in data["nodes"]:  # ids are written bare, so int() them; every other value goes through _q
        gid = n["group"]
        color = css_color(groups[gid]["color"], grey) if gid >= 0 else grey
        label = f"{n['label']}\n{n['type']}" + (f"\ngroup {gid}" if gid >= 0 else "")
        out.append(f"  n{int(n['id'])} [label={_q(label)}, fillcolor={_q(color)}, "
                   f"tooltip={_q(_tooltip(n, groups))}"
                   + (f", comment={_q('group ' + str(gid))}" if gid >= 0 else "") + "];")
    for a, b in data["edges"]:
        gid = data["nodes"][a]["group"]
        color = css_color(groups[gid]["color"], grey) if gid >= 0 else "#999999"
        out.append(f"  n{int(a)} -> n{int(b)} [color={_q(color)}];")
    out.append("  subgraph cluster_legend {")
    out.append('    label="groups"; fontname="Helvetica"; style=dashed;')
    for g in data["groups"]:
        if g["prunable"]:
            text = f"group {g['id']}: {g['kind']} x{g['units']}, {g['flops_share']:.1%} FLOPs"
            if g["decision"]:
                text += f", keeps {g['decision']['kept']}"
            out.append(f"    g{int(g['id'])} [label={_q(text)}, fillcolor={_q(css_color(g['color'], grey))}];")
    out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"
