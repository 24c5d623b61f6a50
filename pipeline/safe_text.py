"""Text from data made safe for a terminal: every command prints through here.

File names, object keys, model output and error messages come from outside: an escape sequence in them
(``\\x1b[2J`` clears the screen, ``\\x1b]0;…\\x07`` retitles the window, a C1 ``\\x9b`` is a CSI on its own)
would drive the terminal instead of being read. They are shown escaped and visible (``\\x1b``), never dropped,
so a strange name stays recognisable. Bidirectional overrides are escaped too: they reorder what is shown.
Rich markup in data is kept out of the way by printing ``Text`` (or ``markup=False``), never a markup string.
"""
from __future__ import annotations

import json
import re

from rich.text import Text

_CONTROLS = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[{_CONTROLS}]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: object, keep_newlines: bool = False) -> str:
    """``text`` with control characters escaped visibly; newlines kept only when asked (multi-line text)."""
    text = "" if text is None else str(text)
    if keep_newlines:
        return "\n".join(_UNSAFE.sub(_escape, line) for line in text.split("\n"))
    return _UNSAFE.sub(_escape, text)


def safe_text(text: object, style: str = "") -> Text:
    """A rich ``Text`` of ``text`` escaped: printed as it is, markup in it never interpreted."""
    return Text(safe(text), style=style)


def json_line(value) -> str:
    """One JSON object on one line; JSON escapes C0 itself, the C1 and bidi characters are escaped here too."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False))
