"""A third-party backend for the registry tests, loaded through an entry point."""

from __future__ import annotations

from pgflow_backends.memory import InMemoryBackend


class FakeBackend(InMemoryBackend):
    """An in-memory backend that remembers the URL it was opened with."""

    opened_with: str = ""

    @classmethod
    def from_url(cls, url: str, **_: object) -> FakeBackend:
        backend = cls()
        backend.opened_with = url
        return backend
