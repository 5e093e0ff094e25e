"""A run directory whose names come from hostile sites: report.md and report.html show them as text only,
and report.html embeds the run's own figures and nothing else (issue 8, finding 6)."""

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fedseg.evaluation.cross_site import cross_site_matrix, cross_site_records, failures, write_cross_site_csv
from fedseg.evaluation.results import summarise_model
from fedseg.evaluation.statistics import paired_comparisons
from fedseg.evaluation.text import printable
from fedseg.report.figures import figure_path
from fedseg.report.markdown import write_report
from fedseg.report.overlays import overlay_figure
from fedseg.types import CaseMetrics

UNDECODABLE = b"case\xff.png".decode("utf-8", "surrogateescape")
OWN_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "table", "thead", "tbody", "tr",
            "th", "td", "strong", "code", "pre", "ul", "li", "img"}
"""Every tag the report writes itself."""
OWN_ATTRIBUTES = {("html", "lang"), ("meta", "charset"), ("img", "src"), ("img", "alt"), ("code", "class")}


def hostile_cases(secret):
    return ["<script>alert(1)</script>", '<img src="/etc/hostname">', "![x](/etc/hostname)",
            "[a](javascript:alert(1))", "a|b\nc|d", f'<img src="{secret}">', f"![s]({secret})", UNDECODABLE]


class Page(HTMLParser):
    """Start tags with attributes, the rows of each table (cell texts), list items, the title, the code."""

    def __init__(self, html):
        super().__init__(convert_charrefs=True)
        self.tags, self.tables, self.items, self.text = [], [], [], {"title": "", "pre": ""}
        self._cell = self._item = None
        self._in = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "li":
            self._item = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "li":
            self.items.append("".join(self._item))
            self._item = None
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data):
        for part in (self._cell, self._item):
            if part is not None:
                part.append(data)
        for tag in ("title", "pre"):
            if tag in self._in:
                self.text[tag] += data


def write_run(root, sites, models=("FL_global", "standalone_x"), experiment_name="tiny", examples=(), extra_toml="",
              **extra_results):
    """A finished run directory as the runtimes write it: results.json, cross_site.csv, metrics.jsonl,
    experiment.toml, and overlay figures for the sites in ``examples``. Every other case fails."""
    run = root / "run"
    (run / "figures").mkdir(parents=True)
    scores = {model: {site: [CaseMetrics(case, dice={"lesion": 0.3 + 0.1 * i + 0.05 * m}, hd95={"lesion": 2.0 + i},
                                         bbox_coverage={"lesion": 1.0}, failed=["lesion"] if i % 2 else [])
                             for i, case in enumerate(cases)] for site, cases in sites.items()}
              for m, model in enumerate(models)}
    records = [r for model, per_site in scores.items() for r in cross_site_records(model, per_site)]
    write_cross_site_csv(records, run / "cross_site.csv")
    results = {**summarise_model(models[0], scores[models[0]]), "experiment": experiment_name, "models": list(models),
               "rounds": 1, "matrix": cross_site_matrix(records), "failures": failures(records),
               "comparisons": paired_comparisons(records, reference=models[0], n_resamples=200) if len(models) > 1
               else [], "wall_time_s": 1.0, "train_seconds": 0.5, **extra_results}
    (run / "results.json").write_text(json.dumps(results, allow_nan=True))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"round": r, "site": site, "train_loss": 1 - r / 4,
                                                           "global_val_dice": r / 4}) + "\n"
                                               for r in range(2) for site in sites))
    (run / "experiment.toml").write_text(f'name = "tiny"\nseed = 0\n{extra_toml}\n')  # the report's name: results
    image = np.zeros((8, 8))
    for site in examples:
        overlay_figure(site, models[0], [("best", sites[site][0], 0.5, image, image, image)], run / "figures")
    return run


def check_page(run, secret=None):
    """What holds for every report, whatever the names: returns the parsed report.html."""
    html = (run / "report.html").read_text()
    page = Page(html)
    assert {tag for tag, _ in page.tags} <= OWN_TAGS, "a tag the report does not write"
    own = {p.read_bytes() for p in (run / "figures").iterdir() if p.is_file() and not p.is_symlink()}
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(images) == len(own)
    for src in images:  # each is one of the run's own figures, nothing read from elsewhere
        assert src.startswith("data:image/png;base64,") and base64.b64decode(src.split(",", 1)[1]) in own
    assert {(tag, name) for tag, attrs in page.tags for name in attrs} <= OWN_ATTRIBUTES
    for table in page.tables:
        assert len({len(row) for row in table}) == 1, f"a row with a cell too many or too few: {table}"
    if secret is not None:
        for text in (html, (run / "report.md").read_text()):
            assert secret.read_text() not in text and base64.b64encode(secret.read_bytes()).decode() not in text
    return page


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("TOP-SECRET-0f6c2d")
    return path


def test_hostile_case_site_model_and_experiment_names_are_text_in_report_html(tmp_path, secret):
    cases = hostile_cases(secret)
    sites = {"<b>A</b>|x": cases[:4], "B\n## heading": cases[4:], "single": ["<i>only</i>"]}
    toml = 'notes = """\n```\n<script>alert(2)</script>\n```\n"""'
    run = write_run(tmp_path, sites, models=("FL_global", "standalone_<script>x</script>"),
                    experiment_name="<script>alert(3)</script>", examples=list(sites), extra_toml=toml)
    write_report(run)
    page = check_page(run, secret)
    assert page.text["title"] == "fedseg run: <script>alert(3)</script>"
    assert "<script>alert(2)</script>" in page.text["pre"]  # the experiment file, shown as code
    assert ["model", *map(printable, sites), "overall"] in page.tables[1]  # matrix header: one cell per site
    shown = " ".join(page.items)
    for case in cases[1::2]:  # the cases that fail are listed by name
        assert printable(case) in shown
    assert "case\\xff.png" in shown
    assert page.tables[0][2][:2] == ["B\\x0a## heading", "4"] and page.tables[0][3][:3] == ["single", "1", "0.300"]


def test_only_figures_inside_the_run_figures_folder_are_embedded(tmp_path, secret):
    sites = {"evil": ["c1", "c2"], "good": ["c3", "c4"]}
    run = write_run(tmp_path, sites, models=("FL_global",), examples=["good"])
    figure_path(run / "figures", "examples", "evil").symlink_to(secret)  # a planted link to a file outside
    write_report(run)
    page = check_page(run, secret)
    assert sum(tag == "img" for tag, _ in page.tags) == 3  # box plot, learning curves, good's examples
    assert "evil" not in (run / "report.md").read_text().split("## Examples")[1]


def test_rejected_updates_and_unscored_sites_are_listed_as_text(tmp_path):
    rejected = [{"round": 0, "site": "<b>A</b>", "reason": "n_samples 1e9 > 12 declared | <script>x</script>"},
                {"round": 2, "site": "B", "reason": "key `w` has shape (3,) [expected (4,)]"}]
    run = write_run(tmp_path, {"A": ["c1", "c2"]}, models=("FL_global",), rejected_updates=rejected,
                    unscored_sites={"C\n<i>": "its scores had 2 cases, 3 declared"})
    write_report(run)
    page = check_page(run)
    assert ["1", "<b>A</b>", "n_samples 1e9 > 12 declared | <script>x</script>"] in page.tables[1]
    assert ["3", "B", "key `w` has shape (3,) [expected (4,)]"] in page.tables[1]
    assert page.tables[2][1] == ["C\\x0a<i>", "its scores had 2 cases, 3 declared"]
    write_run(tmp_path / "clean", {"A": ["c1", "c2"]}, models=("FL_global",), rejected_updates=[], unscored_sites={})
    write_report(tmp_path / "clean" / "run")
    assert "Rejected updates" not in (tmp_path / "clean" / "run" / "report.md").read_text()


@pytest.mark.filterwarnings("ignore:Glyph .* missing from font")
@settings(max_examples=6, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no slow shrinking
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(st.characters(codec=None), max_size=12), min_size=3, max_size=3, unique=True),
       st.lists(st.text(st.characters(codec=None), max_size=12), min_size=2, max_size=2, unique=True))
def test_random_case_and_site_names_never_make_a_tag_of_their_own(tmp_path_factory, cases, site_names):
    root = tmp_path_factory.mktemp("random")
    run = write_run(root, {site_names[0]: cases[:2], site_names[1]: cases[2:]}, examples=site_names[:1],
                    experiment_name=cases[0])
    write_report(run)
    header = check_page(run).tables[1][0]  # the Dice matrix: a column per site, whatever its name
    assert header[0] == "model" and header[-1] == "overall"
    assert sorted(header[1:-1]) == sorted(printable(site).strip(" ") for site in site_names)
