"""The unique key rule that every backend shares."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pgflow.errors import DefinitionError, SerializationError
from pgflow.records import NewJob, UniqueSpec
from pgflow.unique import unique_key

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _key(now: datetime = NOW, **fields: object) -> str | None:
    fields.setdefault("worker", "app.Worker")
    return unique_key(NewJob(**fields), now)  # type: ignore[arg-type]


def test_a_job_without_unique_has_no_key() -> None:
    assert _key(args={"x": 1}) is None


def test_the_key_is_a_sha256_hex_digest_that_ignores_arg_order() -> None:
    spec = UniqueSpec()
    key = _key(args={"a": 1, "b": 2}, unique=spec)

    assert key is not None and len(key) == 64 and int(key, 16) >= 0
    assert key == _key(args={"b": 2, "a": 1}, unique=spec)


def test_worker_queue_and_args_all_count() -> None:
    spec = UniqueSpec()
    base = _key(args={"a": 1}, unique=spec)

    assert base != _key(args={"a": 2}, unique=spec)
    assert base != _key(args={"a": 1}, unique=spec, queue="other")
    assert base != _key(args={"a": 1}, unique=spec, worker="app.Other")


def test_chosen_keys_ignore_other_args_but_tell_missing_from_null() -> None:
    spec = UniqueSpec(keys=("to",))

    assert _key(args={"to": "a", "body": 1}, unique=spec) == _key(
        args={"to": "a", "body": 2}, unique=spec
    )
    assert _key(args={}, unique=spec) != _key(args={"to": None}, unique=spec)
    assert _key(args={"to": "a"}, unique=spec) != _key(args={"to": "a"}, unique=UniqueSpec())


def test_a_period_splits_time_into_buckets() -> None:
    spec = UniqueSpec(period=60)
    key = _key(args={}, unique=spec)

    assert key == _key(NOW + timedelta(seconds=59.999), args={}, unique=spec)
    assert key != _key(NOW + timedelta(seconds=60), args={}, unique=spec)
    assert key != _key(args={}, unique=UniqueSpec())


@pytest.mark.parametrize("period", [0, -5, float("inf"), float("nan")])
def test_a_bad_period_is_a_definition_error(period: float) -> None:
    with pytest.raises(DefinitionError, match="period"):
        _key(args={}, unique=UniqueSpec(period=period))


def test_non_json_args_name_the_key() -> None:
    with pytest.raises(SerializationError, match="when"):
        _key(args={"when": NOW}, unique=UniqueSpec())


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _key(datetime(2026, 1, 1), args={}, unique=UniqueSpec())


def test_a_scope_separates_otherwise_equal_jobs() -> None:
    first = _key(args={"x": 1}, unique=UniqueSpec(scope="cron * * * * * 12:00"))
    again = _key(args={"x": 1}, unique=UniqueSpec(scope="cron * * * * * 12:00"))
    other = _key(args={"x": 1}, unique=UniqueSpec(scope="cron * * * * * 12:01"))
    unscoped = _key(args={"x": 1}, unique=UniqueSpec())

    assert first == again
    assert len({first, other, unscoped}) == 3
