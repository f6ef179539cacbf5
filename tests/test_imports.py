"""What a process pays for at import: workers never load Alembic, `import pgflow` no driver."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


def test_the_engine_imports_no_database_driver() -> None:
    loaded = _modules_after("import pgflow\npgflow.execute, pgflow.Flow, pgflow.Backoff")
    assert "psycopg" not in loaded
    assert "alembic" not in loaded


def test_a_worker_process_does_not_load_alembic() -> None:
    loaded = _modules_after(
        "import pgflow, pgflow.app, pgflow.cli\n"
        "import pgflow_backends.sqlite, pgflow_backends.postgres\n"
        "backend = pgflow.backend_from_url('sqlite://')\n"
        "backend.migrate()\n"
        "for name in [m for m in sys.modules if m.startswith(('alembic', 'pgflow.migrations'))]:\n"
        "    del sys.modules[name]\n"
        "backend.check_schema()  # a worker's start-up check: one query, no Alembic"
    )
    assert "alembic" not in loaded
