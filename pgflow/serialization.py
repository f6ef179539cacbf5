"""JSON, and only JSON, for everything stored: job args, run inputs, step outputs, errors."""

from __future__ import annotations

import json
import math
from typing import Any

from pgflow.errors import SerializationError

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dumps(value: Any, *, what: str) -> str:
    """Encode `value` as JSON text, or raise SerializationError naming `what` and the key."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        path, culprit = find_unserialisable(value)
        where = f"{what}{path}" if path else what
        raise SerializationError(
            f"{where} is not JSON-serialisable: {culprit} ({exc})", path=where
        ) from None


def loads(text: str | bytes | None) -> Any:
    """Decode JSON text stored by `dumps` (None stays None)."""
    return None if text is None else json.loads(text)


def roundtrip(value: Any, *, what: str) -> Any:
    """The value as it will come back from storage: validates and deep-copies in one go."""
    return json.loads(dumps(value, what=what))


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
