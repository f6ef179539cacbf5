"""The machinery under `pgflow.execute`, private to pgflow (the public face is `pgflow.executor`).

- `run`: one run, its attempts, backoff, recording and resume;
- `attempt`: one attempt's steps, inline or supervised against deadlines;
- `runners`: reusable daemon threads that run supervised attempts;
- `loop`: the shared background event loop for `async def` steps.
"""
