"""The machinery under `pgflow.execute`: runner threads, the async loop, one attempt's run.

Private to pgflow: the public face is `pgflow.executor`.
"""
