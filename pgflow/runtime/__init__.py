"""The distributed runtime behind `pgflow.Pgflow`: one small module per duty.

`execution` runs one job (shared with `pgflow.testing`); `producer` serves one queue (with
`pool` and `loop` running sync and async performs); `heartbeat`, `wakeup` (LISTEN/NOTIFY
hints) and `leader` (staging, rescue, pruning, `cron`) are the instance's background
threads; `reconnect` backs every loop off after database errors; `signals` drains on
SIGINT/SIGTERM.
"""
