"""The one place viz escapes a value for where it lands: HTML, JSON inside ``<script>``, or DOT.

Every value the pictures show (module names, group reasons, a plan's fields) may come from a
file someone else wrote, so each writer passes it through exactly one of these, never by hand.

>>> esc('<img src=x onerror="alert(1)">')
'&lt;img src=x onerror=&quot;alert(1)&quot;&gt;'
>>> print(script_json({"a": "</script><!--&"}))
{"a":"\\u003c/script\\u003e\\u003c!--\\u0026"}
>>> print(dot_string('say "hi"\\nbye'))
"say \\"hi\\"\\nbye"
"""

from __future__ import annotations

import html
import json
import re

__all__ = ["esc", "script_json", "dot_string", "css_color"]

# characters that could end a <script> element or start markup in it, and the two line
# separators that old JavaScript parsers treat as newlines inside string literals
_SCRIPT_SAFE = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
                0x2028: "\\u2028", 0x2029: "\\u2029"}
_DOT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")


def esc(value: object) -> str:
    """``value`` as HTML text or as a double- or single-quoted attribute value."""
    return html.escape(str(value), quote=True)


def script_json(data: object) -> str:
    """``data`` as JSON that can sit inside ``<script>`` (no ``<``, ``>`` or ``&`` at all, so
    neither ``</script>`` nor ``<!--`` can appear); ``JSON.parse`` reads it back unchanged."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).translate(_SCRIPT_SAFE)


def dot_string(value: object) -> str:
    """``value`` as a double-quoted DOT string: backslashes and quotes escaped, any line break
    written as Graphviz's ``\\n`` (so nothing can end the string, the statement or a comment)."""
    s = str(value).replace("\\", "\\\\").replace('"', '\\"')
    s = s.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return '"' + _DOT_CONTROL.sub(" ", s) + '"'


def css_color(value: object, default: str = "#c8c8c8") -> str:
    """``value`` if it is a ``#rrggbb`` colour, else ``default`` (a colour lands in a style
    attribute, where escaping alone would still let ``red;background:url(...)`` through)."""
    return value if isinstance(value, str) and _COLOR.fullmatch(value) else default
