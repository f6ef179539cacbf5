"""JSON, and only JSON, for everything stored: job args, run inputs, step outputs, errors.

Every stored value passes through `dumps`, so the rules all backends share live here: JSON
only, no NUL character (PostgreSQL's JSONB cannot hold one), and a size limit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, NoReturn

from pgflow.errors import DefinitionError, SerializationError

#: The default `max_payload_bytes`: 4 MiB of JSON per stored value. Large enough for any
#: reasonable argument list or result, small enough that a claim of a batch of jobs, or a
#: run's history, stays a modest read; bigger data belongs in object storage, passed by key.
DEFAULT_MAX_PAYLOAD_BYTES = 4 * 1024 * 1024

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
#: How the encoder writes a NUL character (it always escapes control characters).
_ESCAPED_NUL = "\\u0000"


def dumps(value: Any, *, what: str, limit: int | None = None, owner: str = "") -> str:
    """Encode `value` as JSON text, or raise SerializationError naming `what` and the key.

    `limit` bounds the UTF-8 size of the text (None: no bound); `owner` ("job for 'w'")
    prefixes messages so the error names the thing at fault. Text no database can store
    (NUL, lone surrogates) is refused too. The extra checks are cheap on text already
    produced: a substring test, an O(1) isascii() and a length; only non-ASCII text is
    encoded to count its bytes.
    """
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        fault = find_cycle_or_depth(value)
        if fault is not None:
            where = f"{what}{fault[0]}"
            raise SerializationError(f"{_prefix(owner)}{where} {fault[1]}", path=where) from None
        try:
            path, culprit = find_unserialisable(value)
        except RecursionError:
            path, culprit = "", "a value nested too deeply to inspect"
        where = f"{what}{path}" if path else what
        raise SerializationError(
            f"{_prefix(owner)}{where} is not JSON-serialisable: {culprit} ({exc})", path=where
        ) from None
    if _ESCAPED_NUL in text:  # may be a literal backslash-u text, hence the exact search
        nul_at = find_string(value, _has_nul)
        if nul_at is not None:
            where = f"{what}{nul_at}"
            raise SerializationError(
                f"{_prefix(owner)}{where} holds a NUL character (\\u0000), which PostgreSQL "
                "cannot store; remove it or encode the value (e.g. base64)",
                path=where,
            )
    if not text.isascii():  # isascii() is O(1); only other text needs the UTF-8 check
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            where = f"{what}{find_string(value, _has_lone_surrogate) or ''}"
            raise SerializationError(
                f"{_prefix(owner)}{where} holds a lone surrogate character, which is not "
                "valid Unicode text and cannot be stored",
                path=where,
            ) from None
        if limit is not None and size > limit:
            _too_large(size, what=what, limit=limit, owner=owner)
    elif limit is not None and len(text) > limit:
        _too_large(len(text), what=what, limit=limit, owner=owner)
    return text


def dumps_job_field(value: Any, *, what: str, limit: int | None, worker: str) -> str:
    """`dumps` for a field of a new job: errors name the job's worker. The name is only
    formatted on error, so inserting many jobs pays nothing for it."""
    try:
        return dumps(value, what=what, limit=limit)
    except SerializationError as exc:
        raise SerializationError(f"job for {worker!r}: {exc}", path=exc.path) from None


def check_size(text: str, *, what: str, limit: int | None, owner: str = "") -> None:
    """Raise SerializationError when JSON `text` is over `limit` bytes of UTF-8."""
    if limit is None or len(text) * 4 <= limit:
        return
    size = len(text) if len(text) > limit else len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        _too_large(size, what=what, limit=limit, owner=owner)


def _too_large(size: int, *, what: str, limit: int, owner: str) -> NoReturn:
    raise SerializationError(
        f"{_prefix(owner)}{what} is {size:,} bytes of JSON, over the limit of {limit:,} "
        "(max_payload_bytes); store large data elsewhere and pass a reference",
        path=what,
    )


def check_limit(limit: object) -> int | None:
    """A valid `max_payload_bytes` (a positive int, or None for no limit), else
    DefinitionError."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DefinitionError(
            f"max_payload_bytes must be a positive integer or None, got {limit!r}"
        )
    return limit


def _prefix(owner: str) -> str:
    return f"{owner}: " if owner else ""


def loads(text: str | bytes | None) -> Any:
    """Decode JSON text stored by `dumps` (None stays None)."""
    return None if text is None else json.loads(text)


def roundtrip(value: Any, *, what: str) -> Any:
    """The value as it will come back from storage: validates and deep-copies in one go."""
    return json.loads(dumps(value, what=what))


def _has_nul(text: str) -> bool:
    return "\0" in text


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def find_string(value: Any, bad: Callable[[str], bool], path: str = "") -> str | None:
    """The path of the first string (value or key) for which `bad` is true, or None."""
    if isinstance(value, str):
        return path if bad(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and bad(key):
                return f"{path}[{key!r}]"
            found = find_string(item, bad, f"{path}[{key!r}]")
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = find_string(item, bad, f"{path}[{index}]")
            if found is not None:
                return found
    return None


#: Deeper than this, a value is reported as nested too deeply once encoding it failed (the
#: encoder recurses, and gives up near Python's recursion limit of about 1,000 frames).
MAX_NESTING = 500


def find_cycle_or_depth(value: Any) -> tuple[str, str] | None:
    """(path, fault) of a container that contains itself, or of the top-level entry under
    which nesting passes MAX_NESTING; None when neither. Iterative, so it cannot itself run
    out of stack on the values it looks for."""
    on_path: set[int] = set()
    # (entering, item, path (built for shallow levels only), top-level path, depth)
    stack: list[tuple[bool, Any, str, str, int]] = [(True, value, "", "", 0)]
    while stack:
        entering, item, path, top, depth = stack.pop()
        if not entering:
            on_path.discard(id(item))
            continue
        if not isinstance(item, (dict, list, tuple)):
            continue
        if id(item) in on_path:
            return path, "refers back to a value that contains it (a cycle), which JSON cannot hold"
        if depth >= MAX_NESTING:
            return top, f"is nested too deeply to store (more than {MAX_NESTING} levels)"
        on_path.add(id(item))
        stack.append((False, item, path, top, depth))
        entries = list(item.items()) if isinstance(item, dict) else list(enumerate(item))
        for key, child in reversed(entries):
            child_path = f"{path}[{key!r}]" if depth < 32 else path
            stack.append((True, child, child_path, top or child_path, depth + 1))
    return None


def find_unserialisable(value: Any, path: str = "") -> tuple[str, str]:
    """Return (path, description) of the first value JSON cannot hold, e.g. ("['when']", ...)."""
    if value is None or isinstance(value, (str, bool, int)):
        return "", ""
    if isinstance(value, float):
        if math.isfinite(value):
            return "", ""
        return path, f"float {value!r}"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                return f"{path}[{key!r}]", f"key of type {type(key).__name__}"
            found = find_unserialisable(item, f"{path}[{key!r}]")
            if found[1]:
                return found
        return "", ""
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = find_unserialisable(item, f"{path}[{index}]")
            if found[1]:
                return found
        return "", ""
    return path, f"value of type {type(value).__name__}"
