"""report.html: report.md rendered to one self-contained file (figures embedded, inline CSS)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

from fedseg.files import write_text_atomic
from fedseg.report.figures import inside

IMAGE = re.compile(r"<img\b[^>]*>")
SOURCE = re.compile(r'\bsrc="([^"]*)"')

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; line-height: 1.5; color: #222;
       max-width: 1200px; margin: 2em auto; padding: 0 1.5em; }
h1, h2, h3 { line-height: 1.25; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: .3em .7em; text-align: left; white-space: nowrap; }
th { background: #f0f3f6; } tr:nth-child(even) td { background: #f8f9fa; }
code { background: #f3f4f6; padding: .1em .3em; border-radius: 3px; font-size: .9em; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; border-radius: 4px; }
pre code { background: none; padding: 0; }
img { max-width: 100%; height: auto; display: block; margin: 1em 0; }
"""


def write_html(markdown_path: Path, title: str, figures: list[Path]) -> Path:
    """``report.html`` beside ``markdown_path``, with ``title`` (plain text) and the ``figures`` the report
    wrote embedded as data URIs. Nothing else is read: an image the Markdown names that is not one of
    ``figures``, or one that resolves outside the run's ``figures/`` folder, is left out."""
    root = markdown_path.parent
    embeddable = {path.relative_to(root).as_posix(): path for path in figures if inside(path, root / "figures")}
    body = IMAGE.sub(lambda m: _embed(m[0], embeddable), render(markdown_path.read_text()))
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
    path = markdown_path.with_suffix(".html")
    write_text_atomic(path, page)
    return path


def render(text: str) -> str:
    """The HTML of the report's Markdown (GitHub-style tables, fenced code)."""
    return markdown.markdown(text, extensions=["tables", "fenced_code"], output_format="html")


def _embed(tag: str, embeddable: dict[str, Path]) -> str:
    source = SOURCE.search(tag)
    path = embeddable.get(html.unescape(source[1])) if source else None
    if path is None:
        return ""
    uri = "data:image/png;base64," + base64.b64encode(path.resolve().read_bytes()).decode("ascii")
    return tag[:source.start(1)] + uri + tag[source.end(1):]
