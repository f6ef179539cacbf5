"""The runtime's small building blocks: the per-job cancel flag and the daemon pool."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from pgflow.cancellation import CancelFlag
from pgflow.runtime.pool import DaemonPool


def test_cancel_flag_behaves_like_an_event() -> None:
    flag = CancelFlag()
    assert not flag.is_set()
    started = time.monotonic()
    assert flag.wait(0.05) is False
    assert time.monotonic() - started >= 0.04
    flag.set()
    assert flag.is_set() and flag.wait(0) is True and flag.wait() is True
    flag.clear()
    assert not flag.is_set() and flag.wait(0.01) is False


@pytest.mark.parametrize("waiters", [1, 4])
def test_setting_a_cancel_flag_wakes_every_waiter(waiters: int) -> None:
    flag = CancelFlag()
    woke: list[bool] = []
    threads = [threading.Thread(target=lambda: woke.append(flag.wait(10))) for _ in range(waiters)]
    for thread in threads:
        thread.start()

    def all_blocked() -> bool:  # each waiter sits in the Condition (CPython's waiter list)
        cond = flag._cond
        return cond is not None and len(cond._waiters) == waiters  # type: ignore[attr-defined]

    deadline = time.monotonic() + 10
    while not all_blocked() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert all_blocked()  # so set() below must wake them, not find the flag before they wait
    flag.set()
    for thread in threads:
        thread.join(5)
    assert woke == [True] * waiters


def test_a_set_racing_the_first_wait_is_never_lost() -> None:
    for _ in range(200):
        flag = CancelFlag()
        setter = threading.Thread(target=flag.set)
        setter.start()
        assert flag.wait(5) is True
        setter.join()


def test_the_pool_reports_results_and_errors_to_the_callback() -> None:
    pool = DaemonPool(2, "test")
    results: list[tuple[object, object]] = []
    done = threading.Semaphore(0)

    def report(result: object, error: BaseException | None) -> None:
        results.append((result, type(error).__name__ if error else None))
        done.release()

    def fail() -> None:
        raise ValueError("boom")

    pool.submit(lambda: 42, report)
    pool.submit(fail, report)
    for _ in range(2):
        assert done.acquire(timeout=5)
    assert sorted(results, key=str) == sorted([(42, None), (None, "ValueError")], key=str)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: 1, report)


def test_a_broken_callback_is_logged_and_the_pool_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = DaemonPool(1, "test-broken")
    ran = threading.Event()

    def broken(_result: object, _error: BaseException | None) -> None:
        raise RuntimeError("callback bug")

    with caplog.at_level(logging.ERROR, logger="pgflow.runtime"):
        pool.submit(lambda: None, broken)
        pool.submit(ran.set, lambda *_: None)
        assert ran.wait(5)
    assert any("completion callback failed" in r.getMessage() for r in caplog.records)
    pool.shutdown()
