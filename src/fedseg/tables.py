"""Configuration from TOML, checked before use: the file, every number, and each table's keys and types.

A TOML file may come from another party (a job's experiment, a consortium's project file), so
nothing in it is trusted: a file that is not UTF-8 text, a folder, a huge or deeply nested file,
a NaN or an integer beyond 64 bits, an unknown key or a value of the wrong type is a ``ConfigError``
that names the file, the table and the key. Range checks live in each dataclass's
``__post_init__`` (with ``check_range``), so a config built in code is checked the same way.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from fedseg.errors import UserError

MAX_TOML_BYTES = 1 << 20
"""An experiment or project file is a few kB; anything above 1 MiB is not one."""
_INT64 = 1 << 63
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
"""A key shown as it is; others are shown quoted and escaped, as TOML writes them."""


class ConfigError(UserError):
    """A configuration file is wrong; the message says where and how to fix it."""


def read_toml(path: Path, what: str = "experiment file") -> dict[str, Any]:
    """The TOML document at ``path``; ConfigError if it is missing, not a text file or not TOML."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder; give the path of the {what} (a .toml file)")
        if path.stat().st_size > MAX_TOML_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes is too large (the {what} may have at most "
                              f"{MAX_TOML_BYTES} bytes); is it the right file?")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: the {what} cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text TOML file (byte {raw[exc.start]:#04x} at offset {exc.start} "
                          f"is not UTF-8); give the {what}, saved as UTF-8 text") from None
    return loads_toml(text, str(path))


def loads_toml(text: str, where: str) -> dict[str, Any]:
    """The TOML document ``text`` (e.g. an experiment a job carries); ConfigError naming ``where``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid TOML here: arrays or tables nested too deeply") from None


def check_numbers(data: Any, where: str, keys: tuple = ()) -> None:
    """ConfigError for the first NaN or infinite float, or integer beyond 64 bits, anywhere in ``data``."""
    if isinstance(data, dict):
        for key, value in data.items():
            check_numbers(value, where, (*keys, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            check_numbers(value, where, (*keys, index))
    elif isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"{where}: {key_path(keys)} = {data} is not a finite number; give a finite value")
    elif isinstance(data, int) and not -_INT64 <= data < _INT64:
        raise ConfigError(f"{where}: {key_path(keys)} = {data} is out of range (beyond 64-bit integers)")


def key_path(keys: tuple) -> str:
    """``("training", "lr")`` -> ``[training] lr``; ``("sites", 0, "shard", 1)`` -> ``[[sites]] #1 shard[1]``."""
    if not keys:
        return "the document"
    keys = tuple(k if isinstance(k, int) or BARE_KEY.fullmatch(k) else _quoted(k) for k in keys)
    head, rest = keys[0], keys[1:]
    if not rest:
        return head
    if isinstance(rest[0], int) and len(rest) > 1:
        text, rest = f"[[{head}]] #{rest[0] + 1}", rest[1:]
    else:
        text = f"[{head}]" if isinstance(rest[0], str) else str(head)
    for i, key in enumerate(rest):
        text += f"[{key}]" if isinstance(key, int) else (" " if i == 0 else ".") + key
    return text


def _quoted(key: str) -> str:
    """A TOML quoted key with every unprintable character escaped (a message never moves the cursor)."""
    def escape(c: str) -> str:
        if c in '"\\':
            return "\\" + c
        return c if c.isprintable() else f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}"
    return '"' + "".join(map(escape, key)) + '"'


def build_table(cls: type, table: Any, section: str, where: str) -> Any:
    """``cls(**table)`` after checking keys and value types; the dataclass checks the ranges."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{section}] must be a table, got {table!r:.60}")
    hints = typing.get_type_hints(cls)
    allowed = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: [{section}] unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    for key, value in table.items():
        if not type_ok(value, hints[key]):
            raise ConfigError(f"{where}: [{section}] {key} = {value!r:.60} has the wrong type; "
                              f"expected {_describe(hints[key])}")
    values = {k: tuple(v) if isinstance(v, list) and "tuple" in str(hints[k]) else v for k, v in table.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: [{section}] {exc}") from None


def type_ok(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, list) and all(type_ok(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("NoneType", "nothing")


def check_range(what: str, value: float, low: float | None = None, high: float | None = None, *,
                above: bool = False, below: bool = False) -> None:
    """ValueError unless ``value`` is finite and within the bounds (``above``/``below``: strictly)."""
    too_low = low is not None and (value <= low if above else value < low)
    too_high = high is not None and (value >= high if below else value > high)
    if isinstance(value, float) and not math.isfinite(value) or too_low or too_high:
        if low is not None and high is not None:
            rule = f" within {'(' if above else '['}{low}, {high}{')' if below else ']'}"
        elif low is not None:
            rule = f" {'>' if above else '>='} {low}"
        else:
            rule = f" {'<' if below else '<='} {high}" if high is not None else ""
        kind = "a finite number" if isinstance(value, float) or not rule else ""
        raise ValueError(f"{what} must be {(kind + rule).strip()}, got {value!r}")
