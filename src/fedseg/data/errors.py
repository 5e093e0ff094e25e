"""Errors about input data that a user can act on: each names the file and what is wrong."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedseg.errors import UserError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file (or with the site as a whole when ``path`` is the site)."""

    path: Path
    message: str

    def __str__(self) -> str:
        return printable(f"{self.path}: {self.message}")


def printable(text: object) -> str:
    """``text`` safe to print or write as UTF-8: bytes of a non-UTF-8 file name (held by Python as
    surrogate escapes) become ``\\xNN``, control and other invisible characters ``\\n``, ``\\x1b``,
    ``\\u200b``..."""
    text = str(text)
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name produced
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class DataError(UserError):
    """Bad input found before training; carries every problem found, not just the first."""

    def __init__(self, site: str, problems: list[Problem]):
        self.site = site
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"site '{printable(site)}': {len(problems)} data {noun}:\n{lines}")
