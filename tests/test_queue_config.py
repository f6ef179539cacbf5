"""pgflow.Queue: validation naming the field at fault, and the CLI's per-queue syntax."""

from __future__ import annotations

import re

import pytest

from pgflow.errors import DefinitionError
from pgflow.queue_config import Queue, parse_queue_spec, queue_options


def test_defaults_shape_nothing_beyond_the_instance() -> None:
    queue = Queue()
    assert queue.limit == 10 and not queue.shapes_flow
    assert Queue(limit=3, global_limit=2).shapes_flow


def test_full_queue_round_trips_through_the_cli_form() -> None:
    queue = Queue(
        limit=20,
        global_limit=8,
        rate_limit=(60, 60.0),
        partition_by="tenant_id",
        partition_limit=2,
        partition_rate_limit=[10, 1],  # a list from JSON is accepted
    )
    assert queue.partition_rate_limit == (10, 1.0)
    assert (
        queue.describe()
        == "20:global=8:rate=60/60s:partition=tenant_id:per_partition=2:prate=10/1s"
    )
    assert parse_queue_spec("llm", queue.describe()) == queue


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"limit": 0}, "limit must be an integer >= 1, got 0"),
        ({"limit": True}, "limit must be an integer >= 1, got True"),
        ({"global_limit": 0}, "global_limit must be an integer >= 1"),
        ({"rate_limit": (0, 1.0)}, "rate_limit's allowed count must be an integer >= 1"),
        ({"rate_limit": (5, 0)}, "rate_limit's period must be > 0 seconds"),
        ({"rate_limit": (5, float("inf"))}, "rate_limit's period must be > 0 seconds"),
        ({"rate_limit": 5}, "rate_limit must be (allowed, period_seconds)"),
        ({"partition_limit": 2}, "partition_limit needs partition_by"),
        ({"partition_rate_limit": (1, 1.0)}, "partition_rate_limit needs partition_by"),
        ({"partition_by": "9lives"}, "partition_by must name a key of the jobs' args"),
        ({"partition_by": "a\x00b"}, "partition_by must name a key of the jobs' args"),
        ({"partition_by": 5}, "partition_by must name a key of the jobs' args"),
        ({"global_limit": 2.5}, "global_limit must be an integer >= 1, got 2.5"),
        (
            {"partition_by": "t", "partition_limit": 0},
            "partition_limit must be an integer >= 1, got 0",
        ),
        ({"rate_limit": (5, "1s")}, "rate_limit's period must be a number of seconds"),
        ({"rate_limit": (5, 1.0, 2)}, "rate_limit must be (allowed, period_seconds)"),
        (
            {"partition_by": "t", "partition_rate_limit": (3, -1.0)},
            "partition_rate_limit's period must be > 0 seconds",
        ),
        (
            {"partition_by": "t", "partition_rate_limit": (0.5, 1.0)},
            "partition_rate_limit's allowed count must be an integer >= 1",
        ),
    ],
)
def test_bad_options_name_the_field(options: dict[str, object], problem: str) -> None:
    with pytest.raises(DefinitionError, match=re.escape(problem)):
        Queue(**options)  # type: ignore[arg-type]


def test_queue_options_accepts_ints_and_queues_and_names_the_bad_queue() -> None:
    checked = queue_options({"default": 5, "llm": Queue(limit=2, global_limit=1)})
    assert checked == {"default": Queue(limit=5), "llm": Queue(limit=2, global_limit=1)}
    with pytest.raises(DefinitionError, match="queue 'mail' limit must be a positive integer"):
        queue_options({"mail": 0})
    with pytest.raises(DefinitionError, match="queue"):
        queue_options({"bad name!": 1})


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("20", Queue(limit=20)),
        ("", Queue()),
        ("5:global=2", Queue(limit=5, global_limit=2)),
        ("5:rate=1000/1s", Queue(limit=5, rate_limit=(1000, 1.0))),
        ("5:rate=60/1m", Queue(limit=5, rate_limit=(60, 60.0))),
        ("5:rate=5/500ms", Queue(limit=5, rate_limit=(5, 0.5))),
        ("5:partition=tenant", Queue(limit=5, partition_by="tenant")),
    ],
)
def test_cli_form(spec: str, expected: Queue) -> None:
    assert parse_queue_spec("q", spec) == expected


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("x", "queue 'q': the limit must be a positive integer, got 'x'"),
        ("5:speed=3", "queue 'q': 'speed=3' is not one of"),
        ("5:rate=60", "queue 'q': rate='60' is not ALLOWED/PERIOD"),
        ("5:global=2:global=3", "queue 'q': global= is given twice"),
        ("5:per_partition=2", "queue 'q': partition_limit needs partition_by"),
        ("5:global=0", "queue 'q': global_limit must be an integer >= 1"),
        ("5:global=two", "queue 'q': global must be a positive integer"),
    ],
)
def test_cli_form_errors_name_the_queue(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_queue_spec("q", spec)


@pytest.mark.parametrize(
    ("queue", "shapes"),
    [
        (Queue(limit=50), False),
        (Queue(global_limit=1), True),
        (Queue(rate_limit=(1, 1.0)), True),
        (Queue(partition_by="tenant"), True),
        (Queue(partition_by="tenant", partition_limit=1), True),
    ],
)
def test_only_cluster_wide_options_shape_the_claim(queue: Queue, shapes: bool) -> None:
    assert queue.shapes_flow is shapes
