"""`flow.to_mermaid()`: the exact flowchart for a diamond and a map, hostile step names kept
as text (never parsed as Mermaid), and the graph checked before anything is drawn."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pgflow.definition import Flow
from pgflow.errors import DefinitionError


def _identity(value: Any) -> Any:
    return value


def test_diamond() -> None:
    flow = Flow("diamond")

    @flow.step(depends_on=["b", "c"])
    def d(b: Any, c: Any) -> Any:
        return [b, c]

    @flow.step
    def a(x: Any) -> Any:
        return x

    @flow.step(depends_on=["a"])
    def c(a: Any) -> Any:
        return a

    @flow.step(depends_on=["a"])
    def b(a: Any) -> Any:
        return a

    assert flow.to_mermaid() == (
        "flowchart TD\n"
        '    s0_a["a"]\n'
        '    s1_b["b"]\n'
        '    s2_c["c"]\n'
        '    s3_d["d"]\n'
        "    s0_a --> s1_b\n"
        "    s0_a --> s2_c\n"
        "    s1_b --> s3_d\n"
        "    s2_c --> s3_d\n"
    )


def test_chain_is_a_straight_line() -> None:
    flow = Flow("line")
    flow.add_step("first", _identity)
    flow.add_step("second", _identity)
    assert flow.to_mermaid() == (
        'flowchart TD\n    s0_first["first"]\n    s1_second["second"]\n    s0_first --> s1_second\n'
    )


QUOTED = 'say "hi"'
SPACED = "fetch all pages"
UNICODE = "größe ✓ 数据"
MARKUP = "<b>#1</b> `x`"
NEWLINE = "two\nlines"


def _hostile() -> Flow:
    flow = Flow("hostile")
    flow.add_step(QUOTED, _identity)
    flow.map(_identity, over=QUOTED, name=SPACED)  # type: ignore[call-overload]
    flow.map(_identity, name=UNICODE)  # type: ignore[call-overload]
    flow.add_step(MARKUP, lambda **outputs: outputs, depends_on=[SPACED, UNICODE])
    flow.add_step(NEWLINE, lambda **outputs: outputs, depends_on=[MARKUP])
    return flow


def test_map_with_hostile_names() -> None:
    assert _hostile().to_mermaid() == (
        "flowchart TD\n"
        '    s0_gr__e_____[/"größe ✓ 数据 (map over input)"/]\n'
        '    s1_say__hi_["say #quot;hi#quot;"]\n'
        '    s2_fetch_all_pages[/"fetch all pages (map over say #quot;hi#quot;)"/]\n'
        '    s3__b__1__b___x_["#lt;b#gt;#35;1#lt;/b#gt; #96;x#96;"]\n'
        '    s4_two_lines["two#10;lines"]\n'
        "    s1_say__hi_ --> s2_fetch_all_pages\n"
        "    s2_fetch_all_pages --> s3__b__1__b___x_\n"
        "    s0_gr__e_____ --> s3__b__1__b___x_\n"
        "    s3__b__1__b___x_ --> s4_two_lines\n"
    )


def test_hostile_labels_are_plain_text_and_ids_plain_words() -> None:
    lines = _hostile().to_mermaid().splitlines()
    assert len(lines) == 1 + 5 + 4  # header, one line per step, one per edge
    for line in lines[1:6]:
        node_id, label = re.fullmatch(r'    (\w+)(?:\["|\[/")(.*)(?:"\]|"/\])', line).groups()  # type: ignore[union-attr]
        assert node_id.isascii()
        assert not set(label) & set('"<>`\n')
    for line in lines[6:]:
        assert re.fullmatch(r"    \w+ --> \w+", line) and line.isascii()


def test_names_that_sanitise_alike_get_distinct_ids() -> None:
    flow = Flow("alike")
    flow.add_step("a b", _identity)
    flow.add_step("a-b", lambda **outputs: outputs, depends_on=["a b"])
    text = flow.to_mermaid()
    assert '    s0_a_b["a b"]\n' in text and '    s1_a_b["a-b"]\n' in text
    assert "    s0_a_b --> s1_a_b\n" in text


def test_broken_graph_is_not_drawn() -> None:
    flow = Flow("broken")
    flow.add_step("b", lambda a: a, depends_on=["a"])
    with pytest.raises(DefinitionError, match=r"workflow 'broken' step 'b': depends on unknown"):
        flow.to_mermaid()
