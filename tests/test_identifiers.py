"""Queue names, worker names and instance ids: what is accepted and what is refused."""

from __future__ import annotations

import pytest

from pgflow.errors import DefinitionError
from pgflow.identifiers import validate_instance_id, validate_queue, validate_worker_name


@pytest.mark.parametrize("name", ["default", "q", "mail.high", "tenant:42", "a-b_c", "0", "_x"])
def test_good_queue_names_pass_through(name: str) -> None:
    assert validate_queue(name) == name


@pytest.mark.parametrize(
    "name", ["", ".q", "-q", "a b", "q\n", "x'; DROP TABLE pgflow_jobs; --", "q" * 64, 7, None]
)
def test_bad_queue_names_are_refused_by_name(name: object) -> None:
    with pytest.raises(DefinitionError) as caught:
        validate_queue(name)
    assert repr(name) in str(caught.value)


def test_the_longest_queue_name_is_63_characters() -> None:
    assert validate_queue("q" * 63) == "q" * 63


@pytest.mark.parametrize(
    "name",
    [
        "Worker",
        "myapp.workers.SendEmail",
        "myapp.workers:SendEmail",
        "tests.test_x.<locals>.Local",
        "__main__.Job",
    ],
)
def test_good_worker_names_pass_through(name: str) -> None:
    assert validate_worker_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "1abc", "a..b", ".a", "a.", "a b", "os.system('x')", "a:b:c", "x" * 256, None]
)
def test_bad_worker_names_are_refused_by_name(name: object) -> None:
    with pytest.raises(DefinitionError) as caught:
        validate_worker_name(name)
    assert repr(name)[:50] in str(caught.value)


@pytest.mark.parametrize("instance_id", ["a", "host-1:4242", "node/a@b", "ü-node", "n" * 128])
def test_good_instance_ids_pass_through(instance_id: str) -> None:
    assert validate_instance_id(instance_id) == instance_id


@pytest.mark.parametrize(
    "instance_id", ["", "a b", "a\tb", "x'y", 'x"y', "x`y", "x\\y", "a\x00b", "n" * 129, 3]
)
def test_bad_instance_ids_are_refused_by_name(instance_id: object) -> None:
    with pytest.raises(DefinitionError) as caught:
        validate_instance_id(instance_id)
    assert repr(instance_id)[:50] in str(caught.value)
