"""Cron entries from a text file, for `pgflow worker --cron-file PATH`.

One entry a line: five cron fields (UTC minutes of the database's clock), the name of a
registered worker, then optionally the job's args as a JSON object. Blank lines and lines
starting with `#` are skipped. Worker names are looked up among the workers registered in
this process (imported by the app or `--import`); a file never makes pgflow import a module.

    # minute hour day month weekday  worker                    args
    */5      *    *   *     *        myapp.workers.Report      {"kind": "daily"}
    0        3    *   *     1-5      myapp.workers.Cleanup
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from croniter import croniter

from pgflow import worker as worker_registry
from pgflow.errors import DefinitionError
from pgflow.worker import Worker

__all__ = ["CronFileEntry", "load_cron_file", "parse_cron_lines"]

#: What `Pgflow(cron=...)` takes: (expression, Worker class, args).
CronFileEntry = tuple[str, type[Worker], dict[str, Any]]

CRON_FIELDS = 5


def load_cron_file(path: str | Path) -> list[CronFileEntry]:
    """Read and check a cron file; DefinitionError lists every bad line as "PATH:LINE: why"."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"{path}: cannot read the cron file: {exc}") from None
    return parse_cron_lines(text, source=str(path))


def parse_cron_lines(text: str, *, source: str) -> list[CronFileEntry]:
    """Parse the text of a cron file named `source`; all of it is checked before any error."""
    entries: list[CronFileEntry] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            entries.append(_parse_line(line))
        except DefinitionError as exc:
            problems.append(f"{source}:{number}: {exc}")
    if problems:
        raise DefinitionError("\n".join(problems))
    return entries


def _parse_line(line: str) -> CronFileEntry:
    parts = line.split(maxsplit=CRON_FIELDS + 1)
    if len(parts) < CRON_FIELDS + 1:
        raise DefinitionError(
            f"expected five cron fields (minute hour day month weekday) and a worker name, "
            f"got {line!r}"
        )
    expression = " ".join(parts[:CRON_FIELDS])
    if not croniter.is_valid(expression):
        raise DefinitionError(f"invalid cron expression {expression!r}")
    name = parts[CRON_FIELDS]
    worker = _registered_worker(name)
    if worker is None:
        raise DefinitionError(
            f"unknown worker {name!r}: it must be registered in this process "
            "(import the module that defines it with --import)"
        )
    return (
        expression,
        worker,
        _parse_args(parts[CRON_FIELDS + 1] if len(parts) > CRON_FIELDS + 1 else ""),
    )


def _registered_worker(name: str) -> type[Worker] | None:
    """The worker registered in this process as `name`; a lookup, never an import."""
    with worker_registry._REGISTRY_LOCK:
        return worker_registry._REGISTRY.get(name)


def _parse_args(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        args = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DefinitionError(f"args are not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(args, dict):
        raise DefinitionError(f"args must be a JSON object, got {text!r}")
    return args
