"""Sources of the modeling files the Hugging Face backend writes, as real Python modules.

Each family module here (``bert``, ``distilbert``, ``gpt2``) reads like the file it generates,
written for a family named ``Family``; :mod:`.shared` holds the pieces they have in common.
:func:`render` reads a module's text (never imports it) and turns it into the generated file:

* ``# @begin NAME`` ... ``# @end`` marks a piece: its lines, less the marker's indentation,
  are not written where they stand but wherever ``# @piece NAME`` asks for them;
* a line ``# @piece NAME`` is replaced by that piece, indented as the line is; the piece comes
  from ``variants[NAME]`` when given (``None``: nothing), else the module, else :mod:`.shared`;
* a line ending in ``# template only`` is dropped (what only linting the template needs);
* the identifiers ``OptcFamily...``, ``FAMILY_NAME``, ``FAMILY_TYPE``, ``FAMILY_PREFIX`` and
  the other upper-case names of ``names`` are replaced, also inside strings.

The modules import nothing from optc, like the files they become (loaded with
``trust_remote_code=True`` where optc is not installed).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

__all__ = ["render"]

_HERE = Path(__file__).parent
_MARK = re.compile(r"( *)# @(begin|end|piece)(?: (\w+))?\n?")
_TEMPLATE_ONLY = "# template only"

_Item = str | tuple[str, str]  # a line, or (indentation, piece name)


@cache
def _parse(module: str) -> tuple[tuple[_Item, ...], dict[str, tuple[_Item, ...]]]:
    """A template module's own lines and its pieces."""
    body: list[_Item] = []
    pieces: dict[str, list[_Item]] = {}
    region: tuple[int, list[_Item]] | None = None
    text = (_HERE / f"{module}.py").read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if line.rstrip().endswith(_TEMPLATE_ONLY):
            continue
        mark = _MARK.fullmatch(line)
        indent = region[0] if region else 0
        where = f"{module}.py:{number}"
        if mark and mark[2] == "begin":
            if region or not mark[3] or mark[3] in pieces:
                raise ValueError(f"{where}: a nested, unnamed or repeated piece")
            pieces[mark[3]] = []
            region = (len(mark[1]), pieces[mark[3]])
        elif mark and mark[2] == "end":
            if not region:
                raise ValueError(f"{where}: '# @end' outside a piece")
            region = None
        else:
            if line.strip() and not line.startswith(" " * indent):
                raise ValueError(f"{where}: a line left of its piece's marker")
            line = line[indent:] if line.strip() else "\n"
            item: _Item = (mark[1], mark[3]) if mark and mark[2] == "piece" else line
            (region[1] if region else body).append(item)
    if region:
        raise ValueError(f"{module}.py: a piece without '# @end'")
    return tuple(body), {name: tuple(items) for name, items in pieces.items()}


def _expand(items: tuple[_Item, ...], module: str, variants: dict[str, str | None]) -> list[str]:
    lines: list[str] = []
    for item in items:
        if isinstance(item, str):
            lines.append(item)
            continue
        indent, name = item
        name = variants.get(name, name)
        if name is None:
            continue
        piece = _parse(module)[1].get(name) or _parse("shared")[1].get(name)
        if piece is None:
            raise KeyError(f"no piece {name!r} in {module}.py or shared.py")
        lines += [indent + line if line.strip() else line
                  for line in _expand(piece, module, variants)]
    return lines


def render(module: str, name: str, names: dict[str, str],
           variants: dict[str, str | None] | None = None) -> str:
    """The generated file of template ``module`` for the family class stem ``name``."""
    text = "".join(_expand(_parse(module)[0], module, variants or {}))
    table = {"OptcFamily": f"Optc{name}", "FAMILY_NAME": name, **names}
    pattern = r"\bOptcFamily|\b(?:" + "|".join(map(re.escape, table)) + r")\b"
    return re.sub(pattern, lambda m: table[m[0]], text)
