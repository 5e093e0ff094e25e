"""The site's PACS file (TOML, kept at the site, never part of an experiment): where the PACS is, how
to log in (names of environment variables only) and which studies to pull as which cases.

```toml
[pacs]                                  # DICOMweb ...
dicomweb = "https://pacs.hospital.org/dicom-web"
username_env = "PACS_USER"              # optional: HTTP basic auth from these environment variables
password_env = "PACS_PASSWORD"
ca_bundle = "/etc/ssl/hospital-ca.pem"  # optional, https only
timeout_s = 30

# [pacs]                                # ... or DIMSE
# host = "pacs.hospital.org"
# port = 104
# called_aet = "PACS"
# calling_aet = "FEDSEG"                # must be known to the PACS
# method = "c-get"                      # or "c-move": the PACS sends to move_aet at this machine's move_port
# move_port = 11112

[[cases]]
name = "case_001"
study = "1.2.840.113619.2.55.3.604688119"
series = ["1.2.840.113619.2.55.3.604688119.1"]   # optional: default every series of the study
```
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fedseg.errors import UserError, printable
from fedseg.files import safe_name

UID = re.compile(r"[0-9]+(\.[0-9]+)*")
AET = re.compile(r"[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?")
"""An AE title: 1 to 16 printable ASCII characters, no backslash, no leading or trailing space."""
HOST = re.compile(r"[A-Za-z0-9:]([A-Za-z0-9.:-]{0,251}[A-Za-z0-9])?")
MAX_CASES = 100_000
MAX_SERIES = 10_000
DIMSE_KEYS = {"host", "port", "called_aet", "calling_aet", "method", "move_aet", "move_port", "timeout_s"}
WEB_KEYS = {"dicomweb", "username_env", "password_env", "ca_bundle", "timeout_s"}
SECRET_KEYS = {"password", "username", "user", "passwd", "token"}


class PacsError(UserError):
    """A PACS problem a user can fix: the message names the file, key, case or address, and the fix."""


class PacsUnavailable(PacsError):
    """The PACS cannot be used at all (unreachable, credentials refused, timeout, TLS): stop, do not try other cases."""


def check_uid(value: object, where: str) -> str:
    """``value`` if it is a DICOM UID (digits and dots, at most 64 characters), else PacsError naming ``where``."""
    if isinstance(value, str) and len(value) <= 64 and UID.fullmatch(value):
        return value
    shown = repr(value)[:80] if isinstance(value, str) else f"{type(value).__name__} {repr(value)[:60]}"
    raise PacsError(printable(f"{where}: {shown} is not a DICOM UID (digits separated by dots, at most 64 "
                              "characters, e.g. 1.2.840.113619.2.55.3)"))


@dataclass(frozen=True)
class Case:
    name: str
    study: str
    series: tuple[str, ...] = ()  # empty: every series of the study


@dataclass(frozen=True)
class PacsConfig:
    path: Path
    cases: tuple[Case, ...]
    timeout_s: float = 30.0
    dicomweb: str | None = None
    username_env: str | None = None
    password_env: str | None = None
    ca_bundle: Path | None = None
    host: str | None = None
    port: int | None = None
    called_aet: str | None = None
    calling_aet: str | None = None
    method: str = "c-get"
    move_aet: str | None = None
    move_port: int | None = None

    @property
    def address(self) -> str:
        return self.dicomweb or f"{self.called_aet}@{self.host}:{self.port}"


def load_config(path: Path, cases: bool = True) -> PacsConfig:
    """Read and check a site's PACS file; every problem is a PacsError naming the file, the key and the fix.
    ``cases=False``: only pushing, [[cases]] may be left out."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PacsError(printable(f"cannot read the PACS file {path}: {exc.strerror or exc}")) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PacsError(printable(f"{path} is not valid TOML: {exc}")) from None
    return parse_config(raw, path, cases)


def parse_config(raw: object, path: Path, cases: bool = True) -> PacsConfig:
    where = printable(path)
    if not isinstance(raw, dict):
        raise PacsError(f"{where}: expected a [pacs] table and [[cases]]")
    _unknown(raw, {"pacs", "cases"}, where, "top level")
    pacs = raw.get("pacs")
    if not isinstance(pacs, dict):
        raise PacsError(f"{where}: missing [pacs] table: give dicomweb = \"http://host:8042/dicom-web\", or host, "
                        "port, called_aet and calling_aet for DIMSE")
    secrets = sorted(SECRET_KEYS & pacs.keys())
    if secrets:
        raise PacsError(f"{where}: [pacs] {secrets[0]} is written in the file: credentials never go in a file; put "
                        "them in environment variables and name those: username_env = \"PACS_USER\", "
                        "password_env = \"PACS_PASSWORD\"")
    fields = {"timeout_s": _number(pacs.get("timeout_s", 30.0), where, "timeout_s", 0.1, 3600.0)}
    if "dicomweb" in pacs:
        _unknown(pacs, WEB_KEYS, where, "[pacs] (DICOMweb)")
        fields.update(_web(pacs, path, where))
    elif "host" in pacs:
        _unknown(pacs, DIMSE_KEYS, where, "[pacs] (DIMSE)")
        fields.update(_dimse(pacs, where))
    else:
        raise PacsError(f"{where}: [pacs] needs dicomweb = \"http://host:8042/dicom-web\" (DICOMweb) or host = "
                        "\"pacs.example.org\" with port, called_aet, calling_aet (DIMSE)")
    listed = _cases(raw.get("cases"), where) if cases or "cases" in raw else ()
    return PacsConfig(path=path, cases=listed, **fields)


def _web(pacs: dict, path: Path, where: str) -> dict:
    url = pacs["dicomweb"]
    parts = urlsplit(url) if isinstance(url, str) and len(url) <= 2000 and url.isprintable() else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise PacsError(printable(f"{where}: [pacs] dicomweb = {str(url)[:80]!r} is not an http(s) address; "
                                  "write e.g. \"https://pacs.hospital.org/dicom-web\""))
    if parts.username or parts.password:
        raise PacsError(f"{where}: [pacs] dicomweb has credentials in its address: remove them and name "
                        "environment variables with username_env and password_env")
    if parts.query or parts.fragment:
        raise PacsError(f"{where}: [pacs] dicomweb must not have a query or fragment (?, #): give the service root")
    out: dict = {"dicomweb": url.rstrip("/")}
    for key in ("username_env", "password_env"):
        if key in pacs:
            value = pacs[key]
            if not (isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", value)):
                raise PacsError(printable(f"{where}: [pacs] {key} = {str(value)[:80]!r} must name an environment "
                                          f"variable, e.g. {key} = \"PACS_{key.split('_')[0].upper()}\""))
            out[key] = value
    if ("username_env" in out) != ("password_env" in out):
        raise PacsError(f"{where}: [pacs] give both username_env and password_env, or neither")
    if "ca_bundle" in pacs:
        bundle = pacs["ca_bundle"]
        if parts.scheme != "https":
            raise PacsError(f"{where}: [pacs] ca_bundle is for an https address; dicomweb is {parts.scheme}")
        if not isinstance(bundle, str) or not bundle or "\x00" in bundle:
            raise PacsError(f"{where}: [pacs] ca_bundle must be the path of a PEM file")
        bundle_path = (path.parent / bundle).expanduser()
        if not bundle_path.is_file():
            raise PacsError(printable(f"{where}: [pacs] ca_bundle {bundle_path} is not a file: give the PEM file of "
                                      "the CA that signed the PACS certificate"))
        out["ca_bundle"] = bundle_path
    return out


def _dimse(pacs: dict, where: str) -> dict:
    missing = [k for k in ("port", "called_aet", "calling_aet") if k not in pacs]
    if missing:
        raise PacsError(f"{where}: [pacs] DIMSE needs {', '.join(missing)} (ask the PACS administrator for its AE "
                        "title and port, and to register this machine's calling_aet)")
    host = pacs["host"]
    if not (isinstance(host, str) and HOST.fullmatch(host)):
        raise PacsError(printable(f"{where}: [pacs] host = {str(host)[:80]!r} is not a host name or IP address"))
    out = {"host": host, "port": _port(pacs["port"], where, "port"),
           "called_aet": _aet(pacs["called_aet"], where, "called_aet"),
           "calling_aet": _aet(pacs["calling_aet"], where, "calling_aet")}
    method = pacs.get("method", "c-get")
    if method not in ("c-get", "c-move"):
        raise PacsError(printable(f"{where}: [pacs] method = {str(method)[:40]!r}: use \"c-get\" or \"c-move\""))
    out["method"] = method
    if method == "c-move":
        if "move_port" not in pacs:
            raise PacsError(f"{where}: [pacs] method = \"c-move\" needs move_port: the port on this machine where "
                            "the PACS sends the images (the PACS must know move_aet at this host and port)")
        out["move_port"] = _port(pacs["move_port"], where, "move_port")
        out["move_aet"] = _aet(pacs.get("move_aet", out["calling_aet"]), where, "move_aet")
    elif "move_port" in pacs or "move_aet" in pacs:
        raise PacsError(f"{where}: [pacs] move_port and move_aet are for method = \"c-move\"")
    return out


def _cases(cases: object, where: str) -> tuple[Case, ...]:
    if not isinstance(cases, list) or not cases:
        raise PacsError(f"{where}: no [[cases]]: list what to pull, e.g. [[cases]] name = \"case_001\", "
                        "study = \"<StudyInstanceUID>\"")
    if len(cases) > MAX_CASES:
        raise PacsError(f"{where}: {len(cases)} [[cases]]; at most {MAX_CASES} in one file")
    out, names, claimed = [], set(), {}
    for i, case in enumerate(cases, 1):
        at = f"{where}: [[cases]] #{i}"
        if not isinstance(case, dict):
            raise PacsError(f"{at}: expected a table with name, study and optionally series")
        _unknown(case, {"name", "study", "series"}, where, f"[[cases]] #{i}")
        try:
            name = safe_name(case.get("name"), "case name", "case_001")
        except ValueError as exc:
            raise PacsError(printable(f"{at}: {exc}")) from None
        if name in names:
            raise PacsError(f"{at}: case name '{name}' is used twice; every case needs its own name")
        names.add(name)
        study = check_uid(case.get("study"), f"{at} ('{name}') study")
        series = case.get("series", [])
        if not isinstance(series, list) or len(series) > MAX_SERIES or ("series" in case and not series):
            raise PacsError(f"{at} ('{name}'): series must be a list of 1 to {MAX_SERIES} SeriesInstanceUIDs, or "
                            "left out for every series of the study")
        uids = tuple(check_uid(s, f"{at} ('{name}') series") for s in series)
        if len(set(uids)) != len(uids):
            raise PacsError(f"{at} ('{name}'): a series is listed twice")
        for uid in uids or ("*",):
            other = claimed.get((study, uid)) or claimed.get((study, "*")) or (uid == "*" and next(
                (c for (s, _), c in claimed.items() if s == study), None))
            if other:
                raise PacsError(f"{at} ('{name}'): study {study} (series {uid}) is also pulled by case '{other}'; "
                                "pull each series into one case")
            claimed[(study, uid)] = name
        out.append(Case(name, study, uids))
    return tuple(out)


def _unknown(table: dict, allowed: set[str], where: str, what: str) -> None:
    unknown = sorted(str(k) for k in table.keys() - allowed)
    if unknown:
        raise PacsError(printable(f"{where}: unknown key {unknown[0][:60]!r} in {what}; allowed: "
                                  f"{', '.join(sorted(allowed))}"))


def _number(value: object, where: str, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise PacsError(printable(f"{where}: [pacs] {key} = {str(value)[:40]!r}: give seconds from {low} to {high}"))
    return float(value)


def _port(value: object, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise PacsError(printable(f"{where}: [pacs] {key} = {str(value)[:40]!r}: give a TCP port from 1 to 65535"))
    return value


def _aet(value: object, where: str, key: str) -> str:
    if not (isinstance(value, str) and AET.fullmatch(value)):
        raise PacsError(printable(f"{where}: [pacs] {key} = {str(value)[:40]!r} is not an AE title (1 to 16 "
                                  "printable ASCII characters, no backslash), e.g. \"FEDSEG\""))
    return value
