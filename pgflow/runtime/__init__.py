"""The distributed runtime behind `pgflow.Pgflow`: one small module per loop.

`execution` runs one job (shared with `pgflow.testing`); `producer` serves one queue;
`heartbeat`, `leader`, `listener` are the instance's background duties.
"""
