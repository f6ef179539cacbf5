"""Entry point of `python -m benchmarks`."""

from benchmarks.cli import main

# Guarded: worker processes are spawned, and must not rerun the suite on import.
if __name__ == "__main__":
    raise SystemExit(main())
