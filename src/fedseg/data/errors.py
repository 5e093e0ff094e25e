"""Errors about input data that a user can act on: each names the file and what is wrong."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedseg.errors import UserError, printable


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file (or with the site as a whole when ``path`` is the site)."""

    path: Path
    message: str

    def __str__(self) -> str:
        return printable(f"{self.path}: {self.message}")


class DataError(UserError):
    """Bad input found before training; carries every problem found, not just the first."""

    def __init__(self, site: str, problems: list[Problem]):
        self.site = site
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"site '{printable(site)}': {len(problems)} data {noun}:\n{lines}")
