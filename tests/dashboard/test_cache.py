"""The read model's cache: one computation per period, stale values served while one
background refresh runs, nothing cached with 0 seconds."""

from __future__ import annotations

import threading

from pgflow.dashboard.readmodel import TTLCache


class Ticks:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_values_are_reused_within_their_period() -> None:
    clock = Ticks()
    cache = TTLCache(5.0, clock)
    calls: list[int] = []
    assert cache.get("k", lambda: calls.append(1) or len(calls)) == 1
    clock.now = 4.9
    assert cache.get("k", lambda: calls.append(1) or len(calls)) == 1
    assert calls == [1]


def test_a_stale_value_is_served_while_one_refresh_runs() -> None:
    clock = Ticks()
    cache = TTLCache(5.0, clock)
    cache.get("k", lambda: "old")
    clock.now = 10.0
    release = threading.Event()
    finished = threading.Event()
    started: list[str] = []

    def slow() -> str:
        started.append("refresh")
        assert release.wait(10)
        finished.set()
        return "new"

    assert cache.get("k", slow) == "old"  # served at once, refreshed behind
    assert cache.get("k", slow) == "old"  # a second reader starts no second refresh
    refresher = next(t for t in threading.enumerate() if t.name == "pgflow-dashboard-k")
    release.set()
    assert finished.wait(10)
    refresher.join(10)
    assert not refresher.is_alive()
    assert cache.get("k", lambda: "unused") == "new"
    assert started == ["refresh"]


def test_forget_makes_the_next_reader_wait_and_zero_seconds_caches_nothing() -> None:
    cache = TTLCache(5.0, Ticks())
    cache.get("k", lambda: 1)
    cache.forget()
    assert cache.get("k", lambda: 2) == 2
    uncached = TTLCache(0, Ticks())
    assert uncached.get("k", lambda: 1) == 1
    assert uncached.get("k", lambda: 2) == 2
