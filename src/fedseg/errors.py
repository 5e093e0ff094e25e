"""The base of every error a user can fix (bad data, bad config): shown without a traceback; and
``printable``, the one way a name from another party (a file name, a site's case) goes into a message."""

from __future__ import annotations

import unicodedata

_UNPRINTABLE = {"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"}
"""Control, format (bidi overrides, zero-width), surrogate, unassigned, line and paragraph separators."""


class UserError(Exception):
    """Something in the user's input is wrong; the message says what and how to fix it."""


def printable(text: object) -> str:
    """``text`` as one line of writable UTF-8: the bytes of a non-UTF-8 file name (which Python holds
    as surrogates) become ``\\xNN``, other invisible characters ``\\xNN`` or ``\\uNNNN``."""
    return "".join(_escape(c) if unicodedata.category(c) in _UNPRINTABLE else c for c in str(text))


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, decoded with surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
