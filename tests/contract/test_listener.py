"""The "jobs may be available" hint: announced by inserts, quiet otherwise."""

from __future__ import annotations

import threading

from pgflow.backend import Backend
from pgflow.records import NewJob

from .support import WORKER, insert


def test_an_insert_wakes_a_listener_with_its_queue(backend: Backend) -> None:
    listener = backend.listener()
    try:
        insert(backend, queue="mail")

        assert "mail" in listener.wait(5.0)
        assert listener.wait(0.05) == set()  # what was returned is forgotten
    finally:
        listener.close()


def test_a_scheduled_insert_does_not_wake_a_listener(backend: Backend) -> None:
    listener = backend.listener()
    try:
        backend.insert_jobs([NewJob(worker=WORKER, queue="later", schedule_in=3600.0)])
        insert(backend, queue="now")

        assert listener.wait(5.0) == {"now"}
    finally:
        listener.close()


def test_a_waiting_listener_wakes_when_another_thread_inserts(backend: Backend) -> None:
    listener = backend.listener()
    inserter = threading.Timer(0.05, lambda: insert(backend, queue="late"))
    try:
        inserter.start()

        assert "late" in listener.wait(10.0)
    finally:
        inserter.join(timeout=10)
        listener.close()


def test_a_listener_times_out_empty_when_nothing_happens(backend: Backend) -> None:
    listener = backend.listener()
    try:
        assert listener.wait(0.1) == set()
    finally:
        listener.close()


def test_staging_wakes_a_listener(backend: Backend) -> None:
    insert(backend, queue="retry")
    (job,) = backend.claim_jobs("retry", "node-a", 1)
    backend.fail_job(job.ref, {"kind": "X"}, retry_in=0)
    listener = backend.listener()
    try:
        assert backend.stage_jobs() == ["retry"]

        assert "retry" in listener.wait(5.0)
    finally:
        listener.close()
