"""pgflow.Backoff: the original's 10 s / 100 s / 1000 s schedule, caps, factors and jitter."""

from __future__ import annotations

import math

import pytest

import pgflow


def test_default_schedule() -> None:
    assert pgflow.Backoff().delays(3) == [10.0, 100.0, 1000.0]


def test_factor_and_cap() -> None:
    policy = pgflow.Backoff(base=2.0, factor=0.5, max_delay=3.0)
    assert policy.delays(4) == [1.0, 2.0, 3.0, 3.0]


def test_huge_retry_numbers_do_not_overflow() -> None:
    assert pgflow.Backoff(max_delay=60.0).delay(10_000) == 60.0
    assert pgflow.Backoff().delay(10_000) == math.inf


def test_full_jitter_stays_within_the_undelayed_value() -> None:
    policy = pgflow.Backoff(base=10.0, jitter=True)
    draws = [policy.delay(2) for _ in range(200)]
    assert all(0.0 <= d <= 100.0 for d in draws)
    assert len(set(draws)) > 1  # actually random


def test_zero_factor_means_no_wait() -> None:
    assert pgflow.Backoff(factor=0).delays(2) == [0.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"base": 0}, "base must be > 0"),
        ({"base": -1.0}, "base must be > 0"),
        ({"base": "10"}, "base must be a finite number"),
        ({"factor": -1}, "factor must be >= 0"),
        ({"max_delay": -5}, "max_delay must be >= 0"),
        ({"max_delay": math.nan}, "max_delay must be a finite number"),
        ({"jitter": "yes"}, "jitter must be True or False"),
    ],
)
def test_validation(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(pgflow.DefinitionError, match=pattern):
        pgflow.Backoff(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("retry", [0, -1, 1.5, True])
def test_retry_numbers_start_at_one(retry: object) -> None:
    with pytest.raises(ValueError, match="retry must be an int >= 1"):
        pgflow.Backoff().delay(retry)  # type: ignore[arg-type]


def test_frozen_and_comparable() -> None:
    assert pgflow.Backoff() == pgflow.Backoff(10.0, 1.0, None, False)
    with pytest.raises(AttributeError):
        pgflow.Backoff().base = 2.0  # type: ignore[misc]
