"""The experiment parser on hostile input (issue 8): random TOML documents, with random types in the
known keys and random keys, and random bytes give an Experiment or a UserError, never a traceback;
what it accepts is safe to use and round-trips through its resolved TOML."""

import dataclasses
import datetime as dt
import math
import typing

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedseg.data.preprocessing import INTENSITY_MODES, RESIZE_MODES
from fedseg.errors import UserError
from fedseg.experiment import ARMS, SECTIONS, Experiment, load_experiment
from fedseg.models.registry import NETWORKS, NORMS
from fedseg.plans.registry import OPTIONS, PLANS
from fedseg.training.config import LOSSES, OPTIMIZER_STATES

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORDS = ["a", "b", "site_a", "RAS", "LPI", "cpu", "cuda:0", "invert", "background", "organ", "fedavg", "mean",
         "uniform", "n_samples", "val_dice", "reject", "clip", "nan", "scale:10", *INTENSITY_MODES, *RESIZE_MODES,
         *NETWORKS, *NORMS, *LOSSES, *OPTIMIZER_STATES, *PLANS, *ARMS]

scalars = st.one_of(
    st.booleans(), st.integers(-5, 70), st.integers(-(2**70), 2**70),
    st.floats(-2, 300), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS), st.text(max_size=12),
    st.datetimes(min_value=dt.datetime(1, 1, 2)), st.dates(), st.times())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(WORDS) | st.text(max_size=6), inner, max_size=3), max_leaves=8)
"""Any TOML value: what a hostile or careless author may put under any key."""


def plausible(hint) -> st.SearchStrategy:
    """Values of the right type for a dataclass field, mostly in range, so the parser gets past the
    type checks and exercises the range checks and the cross-checks."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if args and type(None) in args:
        return plausible(next(a for a in args if a is not type(None)))
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(1, 4) | st.integers(-1, 70)
    if hint is float:
        return st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0, 2e-4]) | st.floats(-1, 300)
    if hint is str:
        return st.sampled_from(WORDS)
    if origin is tuple:
        return st.lists(st.sampled_from([16, 32, 64, 0.5, 99.5, -200, 250]), min_size=2, max_size=3) | st.lists(
            plausible(args[0]), max_size=4)
    return st.dictionaries(st.sampled_from(WORDS), st.integers(-1, 4), max_size=3)


def section(cls) -> st.SearchStrategy:
    """Some of a dataclass's keys, with plausible values."""
    hints = typing.get_type_hints(cls)
    return st.fixed_dictionaries({}, optional={f.name: plausible(hints[f.name])
                                               for f in dataclasses.fields(cls) if f.name != "extra"})


labels = st.sampled_from([{"background": 0, "organ": 1}, {"background": 0, "organ": 1, "tumour": 2}])
site = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "B", "site-c", "Hospital_7", "", "../x", "x/../../y", "a.b"]),
     "path": st.sampled_from(["data/a", "/abs/b"])},
    optional={"shard": st.sampled_from([[0, 2], [1, 2], [2, 2]]), "recontrast": st.just("invert"),
              "labels": st.just({"background": 0, "organ": 1})})
plan_keys = sorted({key for keys in OPTIONS.values() for key in keys})
base_documents = st.fixed_dictionaries(
    {"task": st.fixed_dictionaries({"labels": labels}, optional={"spatial_dims": st.sampled_from([2, 3]),
                                                                 "in_channels": st.integers(1, 3)}),
     "sites": st.lists(site, min_size=1, max_size=3, unique_by=lambda s: s["name"].lower())},
    optional={"name": st.sampled_from(["exp", "hippocampus-fedavg", "x" * 64, "../up", "", "a.b", "/abs"]), "seed": st.integers(0, 2**32 - 1),
              "arms": st.lists(st.sampled_from(ARMS), min_size=1, max_size=3, unique=True),
              "plan": st.fixed_dictionaries({"name": st.sampled_from(PLANS)}, optional={
                  "fraction": st.sampled_from([0.5, 1.0]), "proximal_mu": st.just(0.01), "order": st.just("fixed")}),
              "faults": st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["nan", "random", "scale:3"])),
              **{name: section(cls) for name, cls in SECTIONS.items() if name != "task"},
              "splits": st.sampled_from([{"train": 0.6, "val": 0.2, "test": 0.2}, {"train": 1, "val": 0, "test": 0}])
              | section(SECTIONS["splits"])})
KNOWN = {"top": ["name", "seed", "arms", "plan", "faults", "sites", "task", *SECTIONS],
         "sites": ["name", "path", "shard", "labels", "recontrast"], "plan": ["name", *plan_keys],
         **{name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}}


@st.composite
def documents(draw) -> dict:
    """A mostly sensible experiment with up to three keys (known or not) set to any TOML value."""
    document = draw(base_documents)
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(sorted(KNOWN)))
        key = draw(st.sampled_from(KNOWN[where]) | st.text(max_size=6))
        value = draw(values | plausible(draw(st.sampled_from([int, float, str, bool, tuple[int, ...]]))))
        if where == "top":
            document[key] = value
        elif where == "sites":
            draw(st.sampled_from(document["sites"]))[key] = value
        elif isinstance(document.setdefault(where, {}), dict):
            document[where][key] = value
    return document


def check(path) -> None:
    """The property: an Experiment that is safe to use, or a UserError naming the file."""
    try:
        experiment = load_experiment(path)
    except UserError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(experiment, Experiment)
    assert all(math.isfinite(x) for x in numbers(experiment.to_dict()))
    runs = path.parent / "runs"
    for name in (experiment.name, *(s.name for s in experiment.sites)):
        assert (runs / name).resolve().parent == runs.resolve()
    again = path.with_name("resolved.toml")
    again.write_text(experiment.to_toml())
    assert load_experiment(again) == experiment


def numbers(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [x for item in value for x in numbers(item)]
    return [value] if isinstance(value, float) else []


@SETTINGS
@given(documents())
def test_random_experiment_documents_parse_or_give_a_user_error(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("doc") / "exp.toml"
    path.write_text(tomli_w.dumps(document))
    check(path)


@SETTINGS
@given(st.binary(max_size=300) | st.builds(lambda a, b: a + b, st.sampled_from(
    [b"", b"[task]\nlabels = { background = 0, organ = 1 }\n", b"name = \"", b"[[sites]]\nname = "]),
    st.binary(max_size=100)))
def test_random_bytes_parse_or_give_a_user_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("bytes") / "exp.toml"
    path.write_bytes(content)
    check(path)
