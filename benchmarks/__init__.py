"""pgflow's benchmark suite: `python -m benchmarks --help` from the repository root.

Not shipped in the wheel; it measures the installed pgflow against the targets of the issues.
"""
