"""What pgflow for TypeScript needs before it runs: its npm packages and a database with pgmq.

`@pgflow/core` (its SQL migrations) and `pg` (the Node worker's driver) are installed with the
machine's npm into a cache directory outside the repository. pgflow needs pgmq >= 1.5, which
no package registry here carries: a database is made either from a template database that
already holds pgmq (`--pgmq-template` / $PGFLOW_PGMQ_TEMPLATE) or, where the server has the
pgmq extension, with CREATE EXTENSION (done by pgflow's first migration).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.peers.spec import NotInstalled

CORE_VERSION = "0.8.1"
PACKAGES = (f"@pgflow/core@{CORE_VERSION}", "pg@8")
#: Environment variable naming the template database that holds pgmq.
TEMPLATE_ENV = "PGFLOW_PGMQ_TEMPLATE"
#: Environment variable overriding where the npm packages are installed.
CACHE_ENV = "PGFLOW_TS_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "pgflow-bench" / f"pgflow-ts-{CORE_VERSION}"
INSTALL_TIMEOUT = 300.0
#: pgmq's oldest version pgflow 0.8 accepts: 1.5 added `headers` to pgmq.message_record.
PGMQ_MINIMUM = (1, 5)
NOT_INSTALLED = "not measured: pgmq is not installed"
#: The statement of pgflow's first migration that a template-held pgmq replaces.
_CREATE_EXTENSION = re.compile(r'^CREATE EXTENSION IF NOT EXISTS "pgmq"[^;]*;', re.MULTILINE)
#: Supabase pieces the migrations call, stood in for (listed in the peer's note).
STAND_INS = (
    "schema realtime with realtime.send(payload, event, topic, private) as a no-op "
    "(Supabase Realtime broadcasts run, step and task events; nobody listens here)",
)
_REALTIME_STAND_IN = """
CREATE SCHEMA IF NOT EXISTS realtime;
CREATE OR REPLACE FUNCTION realtime.send(
    payload jsonb, event text, topic text, private boolean DEFAULT true
) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
"""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def node_modules() -> Path:
    return cache_dir() / "node_modules"


def migrations_dir() -> Path:
    return node_modules() / "@pgflow" / "core" / "dist" / "supabase" / "migrations"


def _installed() -> bool:
    return migrations_dir().is_dir() and (node_modules() / "pg" / "package.json").is_file()


def ensure_packages() -> Path:
    """Install the npm packages into the cache once; NotInstalled with the reason if not."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise NotInstalled(f"not measured: {tool} is not on PATH")
    if _installed():
        return node_modules()
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    manifest = target / "package.json"
    if not manifest.exists():
        manifest.write_text('{"name": "pgflow-ts-bench", "private": true}\n')
    command = ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(target), *PACKAGES]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NotInstalled(f"not measured: npm install failed ({exc})") from exc
    if done.returncode != 0 or not _installed():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise NotInstalled(f"not measured: npm install {' '.join(PACKAGES)} failed ({tail})")
    return node_modules()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def template_name(option: str | None) -> str | None:
    """The template database named by the option, else by the environment variable."""
    return option or os.environ.get(TEMPLATE_ENV) or None


def _template_holds_pgmq(admin_url: str, template: str) -> bool:
    """True when the template database exists and its pgmq has message_record.headers."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (template,)).fetchone()
    if row is None:
        return False
    url = admin_url.rsplit("/", 1)[0] + "/" + template
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_attribute a JOIN pg_type t ON t.typrelid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname = 'pgmq' AND t.typname = 'message_record' "
            "AND a.attname = 'headers' AND NOT a.attisdropped"
        ).fetchone()
    return found is not None


def _extension_version(admin_url: str) -> tuple[int, ...] | None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'pgmq'"
        ).fetchone()
    return _version(str(row[0])) if row else None


def pgmq_source(admin_url: str, template: str | None) -> str | None:
    """Where pgmq comes from: the template's name, None for the server's extension.

    Raises NotInstalled ("not measured: pgmq is not installed ...") when neither serves.
    """
    if template is not None:
        if _template_holds_pgmq(admin_url, template):
            return template
        raise NotInstalled(
            f"{NOT_INSTALLED} (template database {template!r} is missing or has no pgmq >= 1.5)"
        )
    version = _extension_version(admin_url)
    if version is not None and version[:2] >= PGMQ_MINIMUM:
        return None
    found = "" if version is None else f" (the server's extension is {'.'.join(map(str, version))})"
    raise NotInstalled(
        f"{NOT_INSTALLED}{found}: install pgmq >= 1.5 or name a template database holding it "
        f"with --pgmq-template or ${TEMPLATE_ENV} (see benchmarks/README.md)"
    )


@contextmanager
def database(admin_url: str, template: str | None) -> Iterator[str]:
    """A fresh database (copied from `template` when given), dropped afterwards."""
    import psycopg
    from psycopg import sql

    from benchmarks import postgres

    name = f"pgflow_bench_ts_{secrets.token_hex(6)}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(create)
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        postgres._drop(admin_url, name)


def migrate(url: str, pgmq_from_template: bool) -> list[str]:
    """Apply the stand-ins and every migration of @pgflow/core in order; names applied."""
    import psycopg

    applied: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_REALTIME_STAND_IN)
        for path in sorted(migrations_dir().glob("*.sql")):
            text = path.read_text()
            if pgmq_from_template:
                text = _CREATE_EXTENSION.sub("-- pgmq comes from the template database", text)
            with conn.transaction():
                conn.execute(text.encode())
            applied.append(path.name)
    return applied
