"""The in-memory backend: the backend protocol as a small model, for tests and demos."""

from __future__ import annotations

from pgflow_backends.memory.backend import InMemoryBackend

__all__ = ["InMemoryBackend"]
