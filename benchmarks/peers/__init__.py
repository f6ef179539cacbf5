"""`python -m benchmarks --peers`: pgflow beside the other Python job queues, in one run.

One module per system (`*_peer.py`), the plain-SQL floor (`floor.py`), the measuring
procedures (`measure.py`), worker processes (`procs.py`) and the output (`report.py`,
`chart.py`, `progress.py`); `runner.py` ties them together.
"""
