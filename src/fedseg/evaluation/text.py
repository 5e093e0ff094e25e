"""Names from another party (sites, cases, classes, models, the experiment), made safe to show and to store.

A name may hold anything: bytes of a file name that are not UTF-8 (Python decodes them to lone
surrogates, which cannot be written as UTF-8), control characters, Markdown or HTML. Each output
has its own form, made here and nowhere else:

- ``printable``: one line of writable text (undecodable bytes as ``\\xNN``, control and format
  characters as ``\\uNNNN``), for terminals and messages;
- ``markdown_text``: printable, then Markdown and HTML syntax escaped, for report.md and the
  report.html made from it: it renders as the printable text, never as a tag, link or image;
- ``figure_text``: printable with matplotlib's ``$`` (mathtext) escaped;
- ``store_name`` / ``load_name``: a reversible form for files (cross_site.csv): valid UTF-8,
  no spreadsheet formula, and ``load_name(store_name(n)) == n`` for every ``n``, so cases pair up
  the same way whether they come from memory, results.json or the CSV.
"""

from __future__ import annotations

import html
import re

from fedseg.errors import printable

_MARKDOWN_SYNTAX = re.compile(r"([\\`*\[\]!|#]|(?<![^\W_])_|_(?![^\W_]))")
"""Markdown syntax outside code; ``_`` between two letters or digits (``FL_global``) cannot start or end
emphasis (CommonMark, Python-Markdown), so it stays readable."""
_FORMULA_START = "=+-@"
"""A cell starting with one of these (or tab, CR: escaped anyway) is a formula to a spreadsheet."""


class Markdown(str):
    """Markdown the code wrote itself (bold, a p-value "<0.001"): table cells of this type are kept as
    they are; every other cell is escaped. A plain ``str`` built from it (an f-string) is plain again."""


def markdown_text(text: object) -> str:
    """``text`` for any place in report.md outside code: renders as ``printable(text)``, as text only."""
    return html.escape(_MARKDOWN_SYNTAX.sub(r"\\\1", printable(text)), quote=True)


def markdown_cell(cell: object) -> str:
    """A table cell: ``Markdown`` as it is, anything else escaped."""
    return cell if isinstance(cell, Markdown) else markdown_text(cell)


def figure_text(text: object) -> str:
    """``text`` for a matplotlib title, label or legend: printable, and never parsed as mathtext."""
    return printable(text).replace("$", r"\$")


def store_name(name: str) -> str:
    """The form of ``name`` written to files: backslash doubled, undecodable bytes ``\\xNN``, other
    surrogates and control characters ``\\uNNNN`` (a CSV reader would split a line at a bare CR), a
    leading formula character (``=+-@``) preceded by a backslash."""
    stored = re.sub(r"[\\\x00-\x1f\x7f-\x9f\ud800-\udfff]", _store_escape, name)
    return "\\" + stored if stored[:1] and stored[0] in _FORMULA_START else stored


def _store_escape(match: re.Match) -> str:
    char = match[0]
    return "\\\\" if char == "\\" else printable(char) if 0xDC80 <= ord(char) <= 0xDCFF else f"\\u{ord(char):04x}"


def load_name(stored: str) -> str:
    """The name ``store_name`` wrote (``load_name(store_name(n)) == n``)."""
    def one(match: re.Match) -> str:
        escape = match[1]
        if escape[0] == "x" and len(escape) == 3:
            return chr(0xDC00 + int(escape[1:], 16))
        return chr(int(escape[1:], 16)) if escape[0] == "u" and len(escape) == 5 else escape
    return re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|.)", one, stored, flags=re.S)
