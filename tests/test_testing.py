"""pgflow.testing: inline and manual modes on an in-memory store, without sleeping."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

import pgflow
from pgflow import testing
from pgflow.records import Job, JobState
from pgflow.worker import current_backend

RAN: list[tuple[str, Any]] = []


class Record(pgflow.Worker, queue="default"):
    def perform(self, job: Job) -> Any:
        RAN.append(("record", job.args.get("n")))
        return job.args.get("n")


class Mail(pgflow.Worker, queue="mail", priority=0):
    def perform(self, job: Job) -> None:
        RAN.append(("mail", job.args["to"]))


class Parent(pgflow.Worker):
    """Inserts one Record child per level until depth 0, through the running job's backend."""

    def perform(self, job: Job) -> None:
        RAN.append(("parent", job.args["depth"]))
        backend = current_backend()
        assert backend is not None
        if job.args["depth"] > 0:
            backend.insert_jobs([Parent.new({"depth": job.args["depth"] - 1})])
        else:
            backend.insert_jobs([Record.new({"n": "leaf"})])


class Forever(pgflow.Worker):
    def perform(self, job: Job) -> None:
        backend = current_backend()
        assert backend is not None
        backend.insert_jobs([Forever.new({"n": job.args["n"] + 1})])


class Boom(pgflow.Worker, max_attempts=3):
    def perform(self, job: Job) -> None:
        RAN.append(("boom", job.attempt))
        raise ValueError(f"boom {job.args.get('tag', '')}")


class Discarder(pgflow.Worker):
    def perform(self, job: Job) -> None:
        raise pgflow.Discard("not worth it")


class Snoozer(pgflow.Worker):
    def perform(self, job: Job) -> None:
        RAN.append(("snooze", job.attempt))
        raise pgflow.Snooze(30)


def _shout(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "text": state["text"].upper()}


def _fail_on_empty(state: dict[str, Any]) -> dict[str, Any]:
    if not state["text"]:
        raise ValueError("empty text")
    return state


class Shout:
    # check fails for good at once: a step with attempts left would snooze its job instead.
    __workflow_steps__ = (("check", _fail_on_empty, {"max_attempts": 1}), ("shout", _shout))


ShoutWorker = pgflow.workflow_worker(Shout, queue="flows")


class AsyncRecord(pgflow.Worker):
    async def perform(self, job: Job) -> str:
        RAN.append(("async", job.args["n"]))
        return "done"


@pytest.fixture(autouse=True)
def no_sleeping(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test here must run without a real sleep: time.sleep fails the test."""
    RAN.clear()

    def forbidden(seconds: float) -> None:
        raise AssertionError(f"pgflow.testing slept for {seconds}s")

    monkeypatch.setattr(time, "sleep", forbidden)
    yield


# -- inline ----------------------------------------------------------------------------------


def test_inline_runs_inserted_job_at_once() -> None:
    with testing.inline() as t:
        job = t.app.insert(Record.new({"n": 1}))
        assert RAN == [("record", 1)]
        stored = t.backend.get_job(job.id)
        assert stored is not None and stored.state is JobState.COMPLETED
        assert stored.reserved_by == testing.TESTING_INSTANCE


def test_inline_runs_jobs_inserted_by_jobs() -> None:
    with testing.inline() as t:
        t.app.insert(Parent.new({"depth": 2}))
    assert RAN == [("parent", 2), ("parent", 1), ("parent", 0), ("record", "leaf")]


def test_inline_raises_the_job_error_in_the_test() -> None:
    with testing.inline() as t:
        with pytest.raises(ValueError, match="boom x") as caught:
            t.app.insert(Boom.new({"tag": "x"}))
        assert any("pgflow job #" in note for note in caught.value.__notes__)
        (job,) = t.backend.list_jobs()
        assert job.state is JobState.RETRYABLE
        assert job.errors[0]["kind"] == "ValueError"


def test_inline_stops_a_job_that_inserts_itself_forever() -> None:
    with testing.inline() as t, pytest.raises(RuntimeError, match="nested 50 deep"):
        t.app.insert(Forever.new({"n": 0}))


def test_lazy_attribute_of_the_package() -> None:
    assert pgflow.testing is testing


def test_inline_discard_and_scheduled_jobs() -> None:
    with testing.inline() as t:
        discarded = t.app.insert(Discarder.new())
        stored = t.backend.get_job(discarded.id)
        assert stored is not None and stored.state is JobState.DISCARDED
        t.app.insert(Record.new({"n": "later"}, schedule_in=3600))
        assert RAN == [("record", "later")]


def test_inline_runs_async_perform() -> None:
    with testing.inline() as t:
        t.app.insert(AsyncRecord.new({"n": 7}))
    assert RAN == [("async", 7)]


def test_workflow_worker_runs_durably_in_the_harness_store() -> None:
    with testing.manual() as t:
        job = t.app.insert(ShoutWorker.new({"text": "hi"}))
        t.assert_enqueued(worker=ShoutWorker, queue="flows", args={"text": "hi"})
        assert t.drain("flows").completed == 1
        run = t.backend.get_run(f"job-{job.id}")
        assert run is not None and run.output == {"text": "HI"}
        assert [step.step for step in t.backend.get_steps(run.workflow_id)] == ["check", "shout"]
    with testing.inline() as t, pytest.raises(pgflow.StepFailed, match="empty text"):
        t.app.insert(ShoutWorker.new({"text": ""}))


def test_inline_wraps_a_users_own_app_and_unwraps_it_after() -> None:
    with testing.manual() as owner:
        app = owner.app
        with testing.inline(app):
            app.insert(Record.new({"n": "wrapped"}))
        assert RAN == [("record", "wrapped")]
        app.insert(Record.new({"n": "stored only"}))
        assert RAN == [("record", "wrapped")]
        owner.assert_enqueued(worker=Record, args={"n": "stored only"})


# -- manual: assertions -------------------------------------------------------------------------


def test_manual_stores_without_running() -> None:
    with testing.manual() as t:
        t.app.insert(Record.new({"n": 1, "extra": {"deep": True}}))
        assert RAN == []
        job = t.assert_enqueued(worker=Record, args={"n": 1})
        assert job.worker == Record.options.name
        t.assert_enqueued(worker=Record.options.name, queue="default", priority=0, count=1)
        t.assert_enqueued(args={"extra": {"deep": True}})
        t.refute_enqueued(worker=Mail)
        t.refute_enqueued(worker=Record, args={"n": 2})


def test_assert_enqueued_message_lists_what_is_enqueued() -> None:
    with testing.manual() as t:
        t.app.insert(Mail.new({"to": "ada@example.com"}, priority=3))
        with pytest.raises(AssertionError) as caught:
            t.assert_enqueued(worker=Record, args={"n": 1})
        message = str(caught.value)
        assert f"worker={Record.options.name}" in message
        assert "Enqueued jobs:" in message
        assert "ada@example.com" in message and "queue='mail'" in message
        assert "priority=3" in message


def test_assert_enqueued_on_empty_queue_and_count() -> None:
    with testing.manual() as t:
        with pytest.raises(AssertionError, match="Nothing is enqueued"):
            t.assert_enqueued(worker=Record)
        t.app.insert([Record.new({"n": 1}), Record.new({"n": 2})])
        with pytest.raises(AssertionError, match="expected 1 job"):
            t.assert_enqueued(worker=Record, count=1)
        assert len(t.all_enqueued(worker=Record)) == 2


def test_refute_enqueued_lists_the_matches() -> None:
    with testing.manual() as t:
        t.app.insert(Record.new({"n": 5}))
        with pytest.raises(AssertionError, match=r"found 1:\n  #\d+ .*Record.*'n': 5"):
            t.refute_enqueued(worker=Record)


def test_all_enqueued_filters_and_ignores_finished_jobs() -> None:
    with testing.manual() as t:
        t.app.insert(
            [Record.new({"n": 1}), Mail.new({"to": "x"}), Record.new({"n": 2}, priority=9)]
        )
        assert [job.args["n"] for job in t.all_enqueued(worker=Record)] == [1, 2]
        assert [job.args["n"] for job in t.all_enqueued(priority=9)] == [2]
        assert [job.worker for job in t.all_enqueued(queue="mail")] == [Mail.options.name]
        t.drain("default")
        assert t.all_enqueued(worker=Record) == []
        assert len(t.all_enqueued(worker=Record, state="completed")) == 2


# -- manual: drain ------------------------------------------------------------------------------


def test_drain_runs_due_jobs_by_priority_and_counts_them() -> None:
    with testing.manual() as t:
        t.app.insert([Record.new({"n": "low"}), Record.new({"n": "high"}, priority=5)])
        t.app.insert(Mail.new({"to": "a@b.c"}))
        result = t.drain()
        assert result == testing.DrainResult(completed=3)
        assert result.total == 3 and result.failed == 0
        assert RAN.index(("record", "high")) < RAN.index(("record", "low"))
        assert t.drain().total == 0


def test_drain_one_queue_only() -> None:
    with testing.manual() as t:
        t.app.insert([Record.new({"n": 1}), Mail.new({"to": "x"})])
        assert t.drain("mail").completed == 1
        assert RAN == [("mail", "x")]
        t.assert_enqueued(worker=Record)


def test_drain_runs_recursive_jobs_unless_told_not_to() -> None:
    with testing.manual() as t:
        t.app.insert(Parent.new({"depth": 1}))
        assert t.drain(with_recursion=False).completed == 1
        t.assert_enqueued(worker=Parent, args={"depth": 0})
        assert t.drain().completed == 2
        assert RAN == [("parent", 1), ("parent", 0), ("record", "leaf")]


def test_drain_reraises_the_first_failure_and_leaves_the_rest_waiting() -> None:
    with testing.manual() as t:
        t.app.insert([Boom.new({"tag": "first"}, priority=9), Record.new({"n": 1})])
        with pytest.raises(ValueError, match="boom first"):
            t.drain()
        assert RAN == [("boom", 1)]
        record = t.assert_enqueued(worker=Record, state="available")
        assert record.attempt == 0  # handed back, attempt not counted
        t.assert_enqueued(worker=Boom, state="retryable")


def test_drain_without_raising_counts_failures() -> None:
    with testing.manual() as t:
        t.app.insert([Boom.new(), Discarder.new(), Record.new({"n": 1})])
        result = t.drain(raise_on_failure=False)
        assert result == testing.DrainResult(completed=1, retried=1, discarded=1)


def test_scheduled_jobs_only_run_with_scheduled() -> None:
    with testing.manual() as t:
        assert isinstance(t.clock, pgflow.FakeClock)
        start = t.clock.now()
        t.app.insert(Record.new({"n": "later"}, schedule_in=3600))
        assert t.drain().total == 0
        t.assert_enqueued(worker=Record, state="scheduled")
        assert t.drain(with_scheduled=True).completed == 1
        assert RAN == [("record", "later")]
        assert t.clock.now() - start == timedelta(seconds=3600)
        assert t.clock.sleeps == []


def test_scheduled_job_runs_once_the_clock_is_advanced() -> None:
    with testing.manual() as t:
        assert isinstance(t.clock, pgflow.FakeClock)
        t.app.insert(Record.new({"n": "soon"}, schedule_in=60))
        t.clock.advance(59)
        assert t.drain().total == 0
        t.clock.advance(1)
        assert t.drain().completed == 1


def test_with_scheduled_runs_retries_until_discarded() -> None:
    with testing.manual() as t:
        t.app.insert(Boom.new())
        result = t.drain(with_scheduled=True, raise_on_failure=False)
        assert result == testing.DrainResult(retried=2, discarded=1)
        assert RAN == [("boom", 1), ("boom", 2), ("boom", 3)]
        (job,) = t.backend.list_jobs()
        assert job.state is JobState.DISCARDED and len(job.errors) == 3


def test_drain_stops_a_job_that_snoozes_forever() -> None:
    with testing.manual() as t:
        t.app.insert(Snoozer.new())
        assert t.drain() == testing.DrainResult(snoozed=1)
        with pytest.raises(RuntimeError, match="more than 5 jobs"):
            t.drain(with_scheduled=True, limit=5)


def test_testing_app_factory_and_bad_mode() -> None:
    with testing.testing_app("inline", queues={"default": 1}) as t:
        assert t.mode == "inline"
        t.app.insert(Record.new({"n": 1}))
        assert RAN == [("record", 1)]
    with pytest.raises(ValueError, match="inline' or 'manual"):
        mode: Any = "eager"
        testing.testing_app(mode)
