"""Cleaning the error entries pgflow stores, so any exception's text can be written anywhere.

An exception message may hold a NUL (PostgreSQL's JSONB refuses it), a lone surrogate (not
encodable as UTF-8) or megabytes of text. Every error dict that pgflow stores (a job's
`errors`, a workflow step's or run's error) passes through `clean_error` first.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_MESSAGE_CHARS",
    "MAX_TRACEBACK_CHARS",
    "clean_error",
    "clean_text",
    "exception_text",
    "minimal_error",
    "traceback_text",
]

#: Longest message kept; longer ones are cut at the end, with a marker saying so.
MAX_MESSAGE_CHARS = 2_000
#: Longest traceback kept; longer ones keep their end (where the error was raised).
MAX_TRACEBACK_CHARS = 20_000

_SURROGATE = re.compile("[\ud800-\udfff]")


def _cut_marker(dropped: int) -> str:
    return f"[pgflow: {dropped} characters cut]"


def clean_text(text: str, limit: int, *, keep: str = "head") -> str:
    """`text` without NUL (escaped as the four characters `\\x00`) or lone surrogates
    (replaced by U+FFFD), cut to about `limit` characters; `keep` picks the part kept."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    if len(text) <= limit:
        return text
    dropped = len(text) - limit
    if keep == "tail":
        return f"{_cut_marker(dropped)}\n{text[-limit:]}"
    return f"{text[:limit]} {_cut_marker(dropped)}"


def exception_text(exc: BaseException) -> str:
    """str(exc), or a stand-in when the exception's own __str__ raises."""
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def traceback_text(exc: BaseException) -> str:
    """The formatted traceback, or "" when formatting it raises."""
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:
        return ""


def clean_error(error: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an error dict whose text fields can be stored on every backend."""
    cleaned: dict[str, Any] = {}
    for key, value in error.items():
        if isinstance(value, str):
            if key == "traceback":
                value = clean_text(value, MAX_TRACEBACK_CHARS, keep="tail")
            else:
                value = clean_text(value, MAX_MESSAGE_CHARS)
        cleaned[key] = value
    return cleaned


def minimal_error(error: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """The fallback when even a cleaned error cannot be written: kind and a short ASCII
    message, keeping the attempt bookkeeping fields."""
    kind = str(error.get("kind", "Error")).encode("ascii", "replace").decode("ascii")[:200]
    minimal: dict[str, Any] = {
        key: error[key] for key in ("attempt", "at", "instance_id") if key in error
    }
    minimal.update(
        kind=kind.replace("\x00", ""),
        message=f"the error's text could not be stored ({reason})",
        traceback="",
    )
    return minimal
