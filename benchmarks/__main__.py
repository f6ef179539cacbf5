"""Entry point of `python -m benchmarks`.

Worker processes are spawned, and a spawned child imports this module again as
`__mp_main__`: everything is imported under the guard, so children neither rerun the suite
nor carry the harness (about 12 MB of resident memory in every measured worker)."""

if __name__ == "__main__":
    from benchmarks.cli import main

    raise SystemExit(main())
