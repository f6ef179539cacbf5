"""Payload limits and unstorable text: refused at write time, naming the culprit, none written."""

from __future__ import annotations

from typing import Any

import pytest

from pgflow.errors import SerializationError
from pgflow.records import JobState, StepOutcome, StepRecord
from pgflow.serialization import DEFAULT_MAX_PAYLOAD_BYTES
from tests.contract.support import WORKER, claim_one, error, insert, new

LIMIT = 2_000


def big(size: int) -> dict[str, Any]:
    """Args whose JSON text is a little over `size` bytes."""
    return {"blob": "x" * size}


def test_the_default_limit_is_a_few_megabytes(backend: Any) -> None:
    assert backend.max_payload_bytes == DEFAULT_MAX_PAYLOAD_BYTES == 4 * 1024 * 1024


def test_the_default_limit_refuses_five_megabytes_of_args(backend: Any) -> None:
    with pytest.raises(SerializationError, match="over the limit of 4,194,304"):
        backend.insert_jobs([new(args=big(5 * 1024 * 1024))])
    assert backend.list_jobs() == []


def test_oversized_args_refuse_the_whole_batch(backend: Any) -> None:
    backend.max_payload_bytes = LIMIT
    batch = [new(args={"n": 1}), new(args=big(LIMIT)), new(args={"n": 3})]
    with pytest.raises(SerializationError) as caught:
        backend.insert_jobs(batch)
    message = str(caught.value)
    assert WORKER in message
    assert "args" in message
    assert f"{LIMIT:,}" in message
    size = len('{"blob":""}') + LIMIT
    assert f"{size:,} bytes" in message
    assert backend.list_jobs() == []


def test_oversized_meta_is_refused(backend: Any) -> None:
    backend.max_payload_bytes = LIMIT
    with pytest.raises(SerializationError, match="meta is"):
        backend.insert_jobs([new(meta=big(LIMIT))])
    assert backend.list_jobs() == []


def test_the_limit_counts_utf8_bytes_not_characters(backend: Any) -> None:
    backend.max_payload_bytes = LIMIT
    # 700 three-byte characters: 2,100 bytes of UTF-8, though only about 700 characters.
    with pytest.raises(SerializationError, match="args is"):
        backend.insert_jobs([new(args={"t": "\u20ac" * 700})])
    insert(backend, args={"t": "\u20ac" * 600})  # 1,800 bytes: fits


def test_none_means_no_limit(backend: Any) -> None:
    backend.max_payload_bytes = None
    job = insert(backend, args=big(DEFAULT_MAX_PAYLOAD_BYTES))
    assert len(backend.get_job(job.id).args["blob"]) == DEFAULT_MAX_PAYLOAD_BYTES


def test_nul_in_args_is_a_serialization_error_naming_the_key(backend: Any) -> None:
    with pytest.raises(SerializationError, match=r"args\['inner'\]\[1\] holds a NUL") as caught:
        backend.insert_jobs([new(args={"ok": "a", "inner": ["b", "c\x00d"]})])
    assert caught.value.path == "args['inner'][1]"
    assert backend.list_jobs() == []


def test_nul_in_a_key_is_refused(backend: Any) -> None:
    with pytest.raises(SerializationError, match="NUL"):
        backend.insert_jobs([new(args={"a\x00b": 1})])


def test_a_lone_surrogate_is_a_serialization_error_naming_the_key(backend: Any) -> None:
    with pytest.raises(SerializationError, match=r"args\['name'\] holds a lone surrogate"):
        backend.insert_jobs([new(args={"ok": "é", "name": "bad \ud800 text"})])
    assert backend.list_jobs() == []


def test_the_text_backslash_u0000_is_not_a_nul(backend: Any) -> None:
    job = insert(backend, args={"text": "\\u0000 is how JSON escapes NUL"})
    assert backend.get_job(job.id).args == {"text": "\\u0000 is how JSON escapes NUL"}


def test_an_oversized_error_is_refused_and_the_job_keeps_executing(backend: Any) -> None:
    insert(backend)
    job = claim_one(backend)
    backend.max_payload_bytes = LIMIT
    with pytest.raises(SerializationError, match=f"job {job.id}: error is"):
        backend.fail_job(job.ref, error(1, "m" * LIMIT), retry_in=1.0)
    stored = backend.get_job(job.id)
    assert stored.state is JobState.EXECUTING
    assert stored.errors == ()


def test_errors_are_appended_in_order(backend: Any) -> None:
    insert(backend, max_attempts=3)
    for attempt in (1, 2):
        job = claim_one(backend)
        assert backend.fail_job(job.ref, error(attempt, f"m{attempt}"), retry_in=0.0) is (
            JobState.RETRYABLE
        )
        backend.stage_jobs()
    job = claim_one(backend)
    assert backend.fail_job(job.ref, error(3, "m3"), retry_in=0.0) is JobState.DISCARDED
    stored = backend.get_job(job.id)
    assert [e["message"] for e in stored.errors] == ["m1", "m2", "m3"]


def test_oversized_run_input_and_outputs_are_refused(backend: Any) -> None:
    backend.max_payload_bytes = LIMIT
    with pytest.raises(SerializationError, match="run 'wf-big': input is"):
        backend.start_run(workflow_id="wf-big", workflow="w", input=big(LIMIT), max_attempts=1)
    assert backend.get_run("wf-big") is None
    run = backend.start_run(workflow_id="wf-1", workflow="w", input={}, max_attempts=1).run
    step = StepRecord(
        workflow_id="wf-1",
        step="fetch",
        index=0,
        attempt=run.attempt,
        outcome=StepOutcome.COMPLETED,
        started_at=run.started_at,
        duration=0.0,
        output=big(LIMIT),
    )
    with pytest.raises(SerializationError, match="step 'fetch' of run 'wf-1': output is"):
        backend.record_step(step)
    assert backend.get_steps("wf-1") == []
    with pytest.raises(SerializationError, match="run 'wf-1': output is"):
        backend.finish_run("wf-1", run.attempt, "completed", output=big(LIMIT))
    assert backend.get_run("wf-1").state == "running"


def test_a_nul_in_a_step_output_is_refused(backend: Any) -> None:
    run = backend.start_run(workflow_id="wf-nul", workflow="w", input={}, max_attempts=1).run
    with pytest.raises(SerializationError, match=r"output\['x'\] holds a NUL"):
        backend.finish_run("wf-nul", run.attempt, "completed", output={"x": "\x00"})


def test_args_nested_deeper_than_the_encoder_recurses_are_refused_by_name(backend: Any) -> None:
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(SerializationError, match=r"args\['deep'\] is nested too deeply"):
        backend.insert_jobs([new(args={"n": 1}), new(args={"deep": nested})])
    assert backend.list_jobs() == []


def test_circular_args_are_refused_naming_where_the_cycle_closes(backend: Any) -> None:
    loop: list[Any] = [1]
    loop.append({"back": loop})
    with pytest.raises(SerializationError, match=r"args\['x'\]\[1\]\['back'\] refers back"):
        backend.insert_jobs([new(args={"x": loop})])
    assert backend.list_jobs() == []
