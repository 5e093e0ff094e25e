"""``pull(config, site)``: the cases a site's PACS file lists, fetched once into ``SITE/dicom/<case>/``.

Resumable: a case recorded complete is not asked for again (the PACS is not contacted for it), and of
a case begun before only the instances not yet here are fetched. A case the PACS cannot give whole
(study unknown, a listed series missing, an instance that did not arrive) is reported and left
unrecorded, so the next run completes it; an unreachable PACS or refused credentials stop the pull."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from fedseg.data.pacs.cache import Instance, SiteCache
from fedseg.data.pacs.config import Case, PacsConfig, PacsError, PacsUnavailable

Progress = Callable[[int, int, str], None]
"""``progress(done, total, case)``: instances fetched so far in this pull, instances to fetch, the case."""


@dataclass
class PullSummary:
    cases: int = 0                # cases in the PACS file
    skipped: int = 0              # recorded complete before: the PACS was not asked
    complete: int = 0             # complete now (skipped included)
    downloaded: int = 0           # instances fetched by this run
    present: int = 0              # instances of the cases pulled now that were already here
    failed: dict[str, str] = field(default_factory=dict)  # case -> what to do


def connect(config: PacsConfig, session: requests.Session | None = None):
    """The PACS of ``config``: DICOMweb (``session`` lets a caller watch its requests) or DIMSE."""
    if config.dicomweb:
        from fedseg.data.pacs.dicomweb import DicomWeb

        return DicomWeb(config, session)
    from fedseg.data.pacs.dimse import Dimse

    return Dimse(config)


def pull(config: PacsConfig, site: Path, progress: Progress | None = None,
         session: requests.Session | None = None) -> PullSummary:
    cache = SiteCache(site)
    summary = PullSummary(cases=len(config.cases))
    todo = []
    for case in config.cases:
        if cache.is_complete(case):
            summary.skipped += 1
        else:
            todo.append(case)
    summary.complete = summary.skipped
    if not todo:
        return summary
    pacs = connect(config, session)
    plans = []
    for case in todo:
        try:
            listed = _checked(case, pacs.find(case), config)
        except PacsUnavailable:
            raise
        except PacsError as exc:
            summary.failed[case.name] = str(exc)
            continue
        present = cache.present(case)
        wanted = [i for i in listed if (i.series, i.sop) not in present]
        summary.present += len(listed) - len(wanted)
        plans.append((case, listed, wanted, _not_found(case, listed, config)))
    total = sum(len(wanted) for _, _, wanted, _ in plans)
    if progress:
        progress(0, total, "")
    for case, listed, wanted, problem in plans:
        if wanted:
            try:
                _fetch(pacs, cache, case, listed, wanted, summary, total, progress)
            except PacsUnavailable:
                raise
            except PacsError as exc:
                summary.failed[case.name] = str(exc)
                continue
        here = cache.present(case)
        missing = [i for i in listed if (i.series, i.sop) not in here]
        if problem or missing or not listed:
            summary.failed[case.name] = problem or (
                f"case '{case.name}': {len(missing)} of {len(listed)} instances did not arrive from "
                f"{config.address}; run the pull again")
        else:
            cache.mark_complete(case, len(listed))
            summary.complete += 1
    return summary


def _fetch(pacs, cache: SiteCache, case: Case, listed: list[Instance], wanted: list[Instance],
           summary: PullSummary, total: int, progress: Progress | None) -> None:
    wanted_set = set(wanted)
    begun = {i.series for i in listed if i not in wanted_set}
    whole = {i.series for i in wanted} - begun  # nothing of these here yet: one request per series
    allowed = {i.series for i in listed}
    where = f"pull from {pacs.config.address}"
    received = [0]

    def sink(data: bytes) -> None:
        received[0] += 1
        if received[0] > 2 * len(listed) + 10:  # a PACS sending the same or unlisted instances without end
            raise PacsError(f"{where}: case '{case.name}': the PACS sent {received[0]} files for the {len(wanted)} "
                            "asked for; the PACS answers retrieves wrongly: tell its administrator")
        cache.accept(case, data, allowed, where)
        summary.downloaded += 1
        if progress:
            progress(summary.downloaded, total, case.name)

    pacs.retrieve(case, wanted, whole, sink)


def _checked(case: Case, listed: list[Instance], config: PacsConfig) -> list[Instance]:
    """The PACS's listing without repeats; PacsError when it names another study or an unasked series."""
    seen, out = set(), []
    for item in listed:
        if item.study != case.study or (case.series and item.series not in case.series):
            raise PacsError(f"case '{case.name}': the PACS at {config.address} answered the search for study "
                            f"{case.study} with instance {item.sop} of study {item.study}, series {item.series}; "
                            "the PACS answers queries wrongly: tell its administrator")
        if item.sop not in seen:
            seen.add(item.sop)
            out.append(item)
    return out


def _not_found(case: Case, listed: list[Instance], config: PacsConfig) -> str | None:
    if not listed:
        return (f"case '{case.name}': study {case.study} not found on the PACS at {config.address} (no instances"
                f"{' in the listed series' if case.series else ''}); check study for this case in {config.path}")
    series = {i.series for i in listed}
    absent = [s for s in case.series if s not in series]
    if absent:
        return (f"case '{case.name}': series {', '.join(absent)} of study {case.study} not found on the PACS at "
                f"{config.address}; the other series were pulled: check series in {config.path}, or rerun when "
                "the PACS has them")
    return None
