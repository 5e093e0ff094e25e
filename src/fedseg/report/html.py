"""report.html: report.md rendered to one self-contained file (figures embedded, inline CSS)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

from fedseg.files import write_text_atomic

IMAGE_SOURCE = re.compile(r'(<img\b[^>]*?\bsrc=")([^"]+)(")')

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


def write_html(markdown_path: Path) -> Path:
    """``report.html`` beside ``markdown_path``; images it links to (relative paths) become data URIs."""
    text = markdown_path.read_text()
    body = markdown.markdown(text, extensions=["tables", "fenced_code"], output_format="html")
    body = IMAGE_SOURCE.sub(lambda m: m[1] + _data_uri(markdown_path.parent / html.unescape(m[2])) + m[3], body)
    title = next((line[2:] for line in text.splitlines() if line.startswith("# ")), markdown_path.stem)
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
    path = markdown_path.with_suffix(".html")
    write_text_atomic(path, page)
    return path


def _data_uri(path: Path) -> str:
    kind = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".svg": "svg+xml"}.get(path.suffix.lower(), "png")
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
