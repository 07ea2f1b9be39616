"""Render atomslib's plain-text docstrings faithfully in the API reference.

atomslib docstrings are written for `help()`: unicode maths with |x| for absolute values, aligned
lists and shapes, `name` for code. Read as reStructuredText they turn into substitution and
indentation errors. This extension keeps the first paragraph as text (with RST specials escaped)
and shows the rest verbatim as a literal block, so the page says exactly what `help()` says.
"""
from __future__ import annotations

import re

_SPECIAL = re.compile(r"([|*_\\])")


def _escape(line: str) -> str:
    # keep `code` spans (rendered as inline code), escape everything RST would interpret
    parts = line.split("`")
    out = []
    for i, p in enumerate(parts):
        out.append(f"``{p}``" if i % 2 and p else _SPECIAL.sub(r"\\\1", p))
    return "".join(out) if len(parts) % 2 else _SPECIAL.sub(r"\\\1", line)


def process(app, what, name, obj, options, lines: list[str]) -> None:
    if not lines:
        return
    try:
        cut = lines.index("")
    except ValueError:
        cut = len(lines)
    head = [_escape(ln.strip()) for ln in lines[:cut]]
    body = lines[cut:]
    while body and not body[0].strip():
        body.pop(0)
    lines[:] = head
    if body:
        lines += ["", "::", ""] + ["   " + ln for ln in body] + [""]


def setup(app):
    app.connect("autodoc-process-docstring", process)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
