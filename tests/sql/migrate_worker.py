"""Run as a separate process by the concurrent-migration test: migrate, then report the head.

Usage: python migrate_worker.py URL
"""

from __future__ import annotations

import sys

from sqlalchemy import create_engine

from pgflow import migrations
from pgflow_backends.sql.urls import parse


def main() -> None:
    engine = create_engine(parse(sys.argv[1]))
    try:
        migrations.upgrade(engine)
        sys.stdout.write(f"{migrations.current_revision(engine)}\n")
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
