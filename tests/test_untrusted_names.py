"""Names from other parties (sites, cases, models): stored, shown and used in file names safely, whatever they hold."""

import csv
import unicodedata
from pathlib import Path
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedseg.errors import UserError
from fedseg.evaluation.cross_site import read_cross_site_csv, write_cross_site_csv
from fedseg.evaluation.tables import markdown_table
from fedseg.evaluation.text import figure_text, load_name, markdown_text, printable, store_name
from fedseg.report.figures import figure_path, plt, slug
from fedseg.report.html import render

UNDECODABLE = b"case\xff.png".decode("utf-8", "surrogateescape")  # how Python lists a non-UTF-8 file name
HOSTILE = ["<script>alert(1)</script>", '<img src="/etc/hostname">', "![x](/etc/hostname)",
           "[a](javascript:alert(1))", "a|b\nc", "`x|y`", "**bold** _em_", "&lt;b&gt;", "a\\", UNDECODABLE,
           "=HYPERLINK(\"http://x\")", "\u202eevil", "$\\frac$", "\x02wzxhzdk:0\x03", "", " ", "-", "#h"]
names = st.text(st.characters(codec=None), max_size=30) | st.sampled_from(HOSTILE)
ANY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of each table cell and list item."""

    def __init__(self, html):
        super().__init__(convert_charrefs=True)
        self.tags, self.cells, self._open = [], [], None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th", "li"):
            self._open = []

    def handle_endtag(self, tag):
        if tag in ("td", "th", "li") and self._open is not None:
            self.cells.append("".join(self._open))
            self._open = None

    def handle_data(self, data):
        if self._open is not None:
            self._open.append(data)


def test_examples_of_hostile_names_are_shown_as_text_in_the_right_cell():
    table = markdown_table(["case", "n"], [[name, "1"] for name in HOSTILE])
    page = Tags(render(table))
    assert {tag for tag, _ in page.tags} == {"table", "thead", "tbody", "tr", "th", "td"}
    assert page.cells == ["case", "n", *[c for name in HOSTILE for c in (printable(name).strip(" "), "1")]]


@ANY
@given(names)
def test_any_name_in_a_table_cell_or_a_sentence_is_text_only(name):
    page = Tags(render(markdown_table(["case", "n"], [[name, "1"]]) + f"\n\n- model {markdown_text(name)} failed\n"))
    assert [tag for tag, _ in page.tags] == ["table", "thead", "tr", "th", "th", "tbody", "tr", "td", "td", "ul", "li"]
    assert page.cells == ["case", "n", printable(name).strip(" "), "1", f"model {printable(name)} failed".strip(" ")]


@ANY
@given(names)
def test_printable_is_one_writable_line(name):
    shown = printable(name)
    shown.encode("utf-8")  # no lone surrogate left
    assert len(shown.splitlines()) <= 1
    assert not any(unicodedata.category(c) in {"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"} for c in shown)


@ANY
@given(names)
def test_stored_names_come_back_exactly_and_are_no_spreadsheet_formula(name):
    stored = store_name(name)
    stored.encode("utf-8")
    assert load_name(stored) == name
    assert not stored[:1] or stored[0] not in "=+-@\t\r"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(names, min_size=1, max_size=4))
def test_any_names_come_back_from_the_cross_site_csv(tmp_path, cases):
    records = [{"model": case[::-1], "site": case * 2, "case": case, "class": case[:3], "metric": "dice", "value": 0.5}
               for case in cases]
    assert read_cross_site_csv(write_cross_site_csv(records, tmp_path / "cross_site.csv")) == records


def test_cross_site_csv_keeps_undecodable_and_hostile_names(tmp_path):
    records = [{"model": model, "site": site, "case": case, "class": "mean", "metric": "dice", "value": 0.5}
               for model, site, case in [("FL_global", "A", UNDECODABLE), ("a\\b", "=cmd|' /C calc'!A0", "x\ny"),
                                         ("m", "B", "@SUM(1+1)")]]
    path = write_cross_site_csv(records, tmp_path / "cross_site.csv")
    text = path.read_bytes().decode("utf-8")  # strict: the file is UTF-8
    rows = list(csv.reader(text.splitlines(keepends=True)))
    assert all(not cell[:1] or cell[0] not in "=+-@" for row in rows for cell in row)
    assert read_cross_site_csv(path) == records


@pytest.mark.parametrize("content", ["model,site\nm,A\n", "model,site,case,class,metric,value\nm,A,c,mean,dice,high\n",
                                     "model,site,case,class,metric,value\nm,A,c\n", b"model\xff\n"])
def test_a_csv_that_is_not_a_cross_site_csv_is_a_user_error(tmp_path, content):
    path = tmp_path / "cross_site.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match="cross_site.csv"):
        read_cross_site_csv(path)


@pytest.mark.filterwarnings("ignore:Glyph .* missing from font")
@settings(max_examples=40, deadline=None)
@given(names)
def test_any_name_can_be_drawn_in_a_figure(name):
    figure, axis = plt.subplots(figsize=(2, 1))
    axis.set_title(figure_text(name))
    axis.legend(handles=axis.plot([0, 1], label=figure_text(name)))
    figure.canvas.draw()  # raises on mathtext errors and on text that cannot be encoded
    plt.close(figure)


@ANY
@given(names, names)
def test_slugs_stay_in_the_figures_folder_and_differ_for_different_names(tmp_path_factory, first, second):
    folder = tmp_path_factory.getbasetemp() / "figures"
    for name in (first, second):
        part = slug(name)
        assert part and set(part) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-~")  # no '/', '.', '\\'
        assert figure_path(folder, "examples", name).resolve().parent == folder.resolve()
    assert (slug(first).lower() == slug(second).lower()) == (first == second)


def test_slugs_of_names_that_look_alike():
    assert slug("hospital_a") == "hospital_a"
    assert len({slug(n) for n in ["Hospital_A", "hospital_a", "hospital/a", "hospital_a/..", "", ".", ".."]}) == 7
    assert figure_path(Path("f"), "examples", "../../x").name.startswith("examples_------x~")
