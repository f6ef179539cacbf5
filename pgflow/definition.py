"""Workflow definitions: the `Flow` decorator form, the seed `__workflow_steps__` form, and
the validated `Workflow` record both resolve to.

Every definition is checked once, up front, so a malformed workflow fails with a
DefinitionError naming the workflow and step instead of deep inside a run.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

import attrs

from pgflow.errors import DefinitionError
from pgflow.graph.signature import INPUT, StepSignature, read_signature

if TYPE_CHECKING:
    from pgflow.backoff_policy import Backoff
    from pgflow.graph.shape import FlowPlan

F = TypeVar("F", bound=Callable[..., Any])

#: The options a step may set for itself; anything else is a DefinitionError.
STEP_OPTIONS = frozenset(
    {"timeout", "max_attempts", "depends_on", "backoff", "start_delay", "queue", "when"}
)
#: A map step's options: `over` names the one dependency it maps over.
MAP_OPTIONS = (STEP_OPTIONS - {"depends_on"}) | {"over"}
#: The kinds of step a flow holds: functions, maps, and the handlerless kinds (no function:
#: a wait for a signal, a durable sleep, a sub-flow), which the stores settle themselves.
STEP, MAP, WAIT, SLEEP, SUBFLOW = "step", "map", "wait", "sleep", "subflow"
HANDLERLESS = frozenset({WAIT, SLEEP, SUBFLOW})
#: What a wait does when its timeout passes without a signal.
ON_TIMEOUT = ("fail", "skip")


def _is_async(fn: Callable[..., Any]) -> bool:
    """True for `async def` functions, also behind functools.partial or a __call__ method."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we want the bound method itself
    return call is not None and inspect.iscoroutinefunction(call)


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class Step:
    """One named step: in a chain, a function from the previous step's output to its own
    output; in a graph, a function of its dependencies' outputs (by name).

    `timeout` (seconds) and `max_attempts` override the run's options for this step. The
    graph options: `depends_on` (step names), `kind` ("map": run once per element of
    `over`'s output, or of the run's input when `over` is None), `backoff`, `start_delay`
    (seconds after the step is ready), `queue` (where its tasks go) and `when` (a predicate
    over the step's arguments; false skips the step). Construct steps through `Flow` or
    `Workflow`, which validate them with the workflow's name.
    """

    name: str
    fn: Callable[..., Any]
    timeout: float | None = None
    max_attempts: int | None = None
    depends_on: tuple[str, ...] = attrs.field(default=(), converter=_names)
    kind: str = STEP
    over: str | None = None
    backoff: Backoff | None = None
    start_delay: float = 0.0
    queue: str | None = None
    when: Callable[..., Any] | None = None
    #: A wait's timeout in seconds (None: it waits until signalled or cancelled).
    wait_timeout: float | None = None
    #: What a wait's timeout does: "fail" the step (and the run), or "skip" it.
    on_timeout: str = "fail"
    #: A sleep's length in seconds, or `until`: a function of its arguments giving the
    #: aware datetime it ends at (called like `when`).
    sleep_seconds: float | None = None
    until: Callable[..., Any] | None = None
    #: A sub-flow's child flow (a Flow, or anything resolve_workflow accepts).
    child: Any = None
    is_async: bool = attrs.field(init=False)
    signature: StepSignature = attrs.field(init=False, eq=False, repr=False)
    #: What `when` accepts (None without `when`).
    when_signature: StepSignature | None = attrs.field(init=False, eq=False, repr=False)

    @is_async.default
    def _detect_async(self) -> bool:
        return callable(self.fn) and _is_async(self.fn)

    @signature.default
    def _read_signature(self) -> StepSignature:
        if self.kind in HANDLERLESS or not callable(self.fn):
            return StepSignature(known=False)
        return read_signature(self.fn)

    @when_signature.default
    def _read_when_signature(self) -> StepSignature | None:
        if self.until is not None:
            return read_signature(self.until)
        return None if self.when is None else read_signature(self.when)

    @property
    def is_map(self) -> bool:
        return self.kind == MAP

    @property
    def handlerless(self) -> bool:
        """A wait, sleep or sub-flow: no function runs; the stores settle it."""
        return self.kind in HANDLERLESS

    @property
    def makes_graph(self) -> bool:
        """True when this step alone makes its flow a graph (a dependency, a map, or a
        handlerless step)."""
        return bool(self.depends_on) or self.kind == MAP or self.kind in HANDLERLESS


def _as_tuple(steps: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(steps)


@attrs.frozen
class Workflow:
    """A validated workflow: its qualified name and its steps, in order."""

    name: str
    steps: tuple[Step, ...] = attrs.field(converter=_as_tuple)
    #: The queue a distributed run's tasks go to, unless a step names its own.
    queue: str = "default"
    #: Declared so that two definitions of one flow (old and new shape) can be registered
    #: side by side during a rolling deploy; part of the definition when set.
    version: str | int | None = None
    #: True when some step sets its own timeout, so runs need a supervisor even with none.
    has_step_timeouts: bool = attrs.field(init=False, eq=False, repr=False)

    @has_step_timeouts.default
    def _any_step_timeout(self) -> bool:
        return any(step.timeout is not None for step in self.steps)

    #: The shape a run depends on, as JSON: `{"kind": "chain", "steps": [names]}`. Stored
    #: with each run, so a resume under another shape can be refused and explained. A graph
    #: adds its own kind and keys; step options (timeouts, attempts) are left out, since
    #: changing them does not change which stored result belongs to which step.
    definition: dict[str, Any] = attrs.field(init=False, eq=False, repr=False)
    #: sha256 (hex) of the canonical JSON of `definition`: equal shapes, equal hashes.
    fingerprint: str = attrs.field(init=False, eq=False, repr=False)

    #: The validated plan every engine runs: topological order, dependents, leaves.
    plan: FlowPlan = attrs.field(init=False, eq=False, repr=False)

    @definition.default
    def _chain_definition(self) -> dict[str, Any]:
        definition: dict[str, Any] = {
            "kind": "chain",
            "steps": [getattr(step, "name", None) for step in self.steps],
        }
        if self.version is not None:
            definition["version"] = self.version
        return definition

    @fingerprint.default
    def _fingerprint(self) -> str:
        return definition_fingerprint(self.definition)

    @plan.default
    def _no_plan_yet(self) -> Any:
        return None  # built in __attrs_post_init__, once the steps are checked

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DefinitionError(f"workflow name must be a non-empty string, got {self.name!r}")
        if not self.steps:
            raise DefinitionError(f"workflow {self.name!r} has no steps")
        seen: set[str] = set()
        for step in self.steps:
            if not isinstance(step, Step):
                raise DefinitionError(
                    f"workflow {self.name!r}: expected a Step, got {type(step).__name__}"
                )
            check_step(
                self.name,
                step.name,
                step.fn if step.kind not in HANDLERLESS else handlerless_marker,
                timeout=step.timeout,
                max_attempts=step.max_attempts,
            )
            _check_graph_options(self.name, step)
            if step.name in seen:
                raise DefinitionError(f"workflow {self.name!r}: duplicate step name {step.name!r}")
            seen.add(step.name)
        from pgflow.graph.shape import build_plan
        from pgflow.identifiers import validate_queue

        try:
            validate_queue(self.queue)
        except ValueError as exc:
            raise DefinitionError(f"workflow {self.name!r}: {exc}") from None
        if self.version is not None and (
            isinstance(self.version, bool) or not isinstance(self.version, (str, int))
        ):
            raise DefinitionError(
                f"workflow {self.name!r}: version must be a string or an int, got {self.version!r}"
            )
        plan = build_plan(self)
        object.__setattr__(self, "plan", plan)
        if plan.kind == "graph":
            object.__setattr__(self, "definition", plan.definition)
            object.__setattr__(self, "fingerprint", definition_fingerprint(plan.definition))

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(step.name for step in self.steps)

    @property
    def is_graph(self) -> bool:
        """True when some step has a dependency or is a map; otherwise a chain."""
        return any(step.makes_graph for step in self.steps)


def definition_fingerprint(definition: Any) -> str:
    """sha256 hex of `definition` as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def describe_change(stored: Any, current: Any, completed: frozenset[str] = frozenset()) -> str:
    """How `current` differs from the `stored` definition, in words, e.g. "step 'b' renamed
    to 'c'"; `completed` names steps already done, which a change before them would skip."""
    old_kind = stored.get("kind") if isinstance(stored, dict) else None
    new_kind = current.get("kind") if isinstance(current, dict) else None
    old = stored.get("steps") if isinstance(stored, dict) else None
    new = current.get("steps") if isinstance(current, dict) else None
    if old_kind != new_kind or not isinstance(old, list) or not isinstance(new, list):
        return f"the definition changed from {stored!r} to {current!r}"
    if sorted(map(str, old)) == sorted(map(str, new)):
        return f"steps reordered from {old!r} to {new!r}"

    def named(name: object) -> str:
        return f"completed step {name!r}" if name in completed else f"step {name!r}"

    changes: list[str] = []
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for tag, a_start, a_end, b_start, b_end in matcher.get_opcodes():
        removed, added = old[a_start:a_end], new[b_start:b_end]
        if tag == "replace" and len(removed) == len(added):
            changes += [f"{named(a)} renamed to {b!r}" for a, b in zip(removed, added, strict=True)]
        elif tag in ("replace", "delete", "insert"):
            changes += [f"{named(name)} removed" for name in removed]
            after = old[a_end] if a_end < len(old) else None
            for name in added:
                where = "at the end" if after is None else f"before {named(after)}"
                changes.append(f"step {name!r} inserted {where}")
    return "; ".join(changes) or f"steps changed from {old!r} to {new!r}"


def check_step(
    workflow: str,
    name: object,
    fn: object,
    *,
    timeout: object = None,
    max_attempts: object = None,
) -> None:
    """Raise DefinitionError, naming workflow and step, unless the step is well formed."""
    if not isinstance(name, str) or not name:
        raise DefinitionError(
            f"workflow {workflow!r}: step name must be a non-empty string, got {name!r}"
        )
    where = f"workflow {workflow!r} step {name!r}"
    if not callable(fn):
        raise DefinitionError(f"{where}: step is not callable (got {type(fn).__name__})")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise DefinitionError(f"{where}: timeout must be a number of seconds, got {timeout!r}")
        if not math.isfinite(timeout) or timeout <= 0:
            raise DefinitionError(f"{where}: timeout must be > 0 seconds, got {timeout!r}")
    if max_attempts is not None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise DefinitionError(f"{where}: max_attempts must be an int, got {max_attempts!r}")
        if max_attempts < 1:
            raise DefinitionError(f"{where}: max_attempts must be >= 1, got {max_attempts!r}")


def _make_step(
    workflow: str,
    name: object,
    fn: object,
    options: Mapping[str, Any],
    *,
    kind: str = STEP,
    signature: bool = True,
) -> Step:
    allowed = MAP_OPTIONS if kind == MAP else STEP_OPTIONS
    unknown = sorted(set(options) - allowed)
    if unknown:
        hint = ""
        if kind == MAP and "depends_on" in unknown:
            hint = " (a map depends only on the step it maps over: name it with over=)"
        raise DefinitionError(
            f"workflow {workflow!r} step {name!r}: unknown option(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}{hint}"
        )
    timeout = options.get("timeout")
    max_attempts = options.get("max_attempts")
    check_step(workflow, name, fn, timeout=timeout, max_attempts=max_attempts)
    assert isinstance(name, str) and callable(fn)
    where = f"workflow {workflow!r} step {name!r}"
    depends_on = _dependency_names(where, name, options.get("depends_on", ()))
    over = options.get("over")
    if kind == MAP:
        _refuse_map_when(where, options.get("when"))
    if kind == MAP and over is not None:
        if isinstance(over, (list, tuple, set, frozenset)):
            raise DefinitionError(f"{where}: a map maps over one dependency, got over={over!r}")
        depends_on = _dependency_names(where, name, [over])
    step = Step(
        name,
        fn,
        timeout=None if timeout is None else float(timeout),
        max_attempts=max_attempts,
        depends_on=depends_on,
        kind=kind,
        over=over,
        backoff=_check_backoff(where, options.get("backoff")),
        start_delay=_check_start_delay(where, options.get("start_delay", 0.0)),
        queue=_check_step_queue(where, options.get("queue")),
        when=_check_when(where, options.get("when")),
    )
    if signature:
        check_graph_signature(workflow, step)
    return step


def _check_graph_options(workflow: str, step: Step) -> None:
    """The checks `Flow` makes, for a Step built by hand and given to `Workflow` directly."""
    where = f"workflow {workflow!r} step {step.name!r}"
    if step.kind not in (STEP, MAP, *sorted(HANDLERLESS)):
        kinds = ", ".join(repr(k) for k in (STEP, MAP, *sorted(HANDLERLESS)))
        raise DefinitionError(f"{where}: kind must be one of {kinds}, got {step.kind!r}")
    if step.kind in HANDLERLESS:
        _check_handlerless(where, step)
        return
    if step.kind == MAP:
        _refuse_map_when(where, step.when)
        expected = () if step.over is None else _dependency_names(where, step.name, [step.over])
        if step.depends_on != expected:
            raise DefinitionError(
                f"{where}: a map depends only on the step it maps over (over={step.over!r}), "
                f"got depends_on={list(step.depends_on)!r}"
            )
    elif step.over is not None:
        raise DefinitionError(f"{where}: over= is for map steps (kind={MAP!r})")
    _dependency_names(where, step.name, step.depends_on)
    _check_backoff(where, step.backoff)
    _check_start_delay(where, step.start_delay)
    _check_step_queue(where, step.queue)
    _check_when(where, step.when)
    check_graph_signature(workflow, step)


def _refuse_map_when(where: str, when: object) -> None:
    """A map has no single set of arguments for `when` to judge (each element has its own),
    so a condition belongs on the step it maps over, or in the list that step returns."""
    if when is not None:
        raise DefinitionError(
            f"{where}: when= is not accepted on a map step; put the condition on the step "
            "it maps over (a skipped source skips the map) or filter the list it returns"
        )


def _dependency_names(where: str, name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise DefinitionError(f"{where}: depends_on must be a list of step names, got {value!r}")
    names = tuple(value)
    for dependency in names:
        if not isinstance(dependency, str) or not dependency:
            raise DefinitionError(
                f"{where}: a dependency must be a step name (a non-empty string), "
                f"got {dependency!r}"
            )
        if dependency == name:
            raise DefinitionError(f"{where}: a step cannot depend on itself")
    duplicates = sorted({dep for dep in names if names.count(dep) > 1})
    if duplicates:
        raise DefinitionError(f"{where}: dependency {duplicates[0]!r} is listed twice")
    return names


def _check_backoff(where: str, value: object) -> Backoff | None:
    if value is None:
        return None
    from pgflow.backoff_policy import Backoff

    if not isinstance(value, Backoff):
        raise DefinitionError(f"{where}: backoff must be a pgflow.Backoff, got {value!r}")
    return value


def _check_start_delay(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DefinitionError(f"{where}: start_delay must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise DefinitionError(f"{where}: start_delay must be >= 0 seconds, got {value!r}")
    return float(value)


def _check_step_queue(where: str, value: object) -> str | None:
    if value is None:
        return None
    from pgflow.identifiers import validate_queue

    try:
        return validate_queue(value)
    except DefinitionError as exc:
        raise DefinitionError(f"{where}: {exc}") from None


def _check_when(where: str, value: object) -> Callable[..., Any] | None:
    if value is None:
        return None
    if not callable(value):
        raise DefinitionError(f"{where}: when must be callable, got {type(value).__name__}")
    if _is_async(value):
        raise DefinitionError(f"{where}: when must be a plain function, not async")
    return value


def call_names(step: Step) -> frozenset[str] | None:
    """The keyword names a graph step is called with (its dependencies, its element or
    input parameter, `input`); None when its signature cannot be read."""
    signature = step.signature
    if not signature.known:
        return None
    names = set(step.depends_on) if step.depends_on and not step.is_map else set()
    if (step.is_map or not step.depends_on) and signature.first is not None:
        names.add(signature.first)
    if INPUT in signature.names or signature.var_keyword:
        names.add(INPUT)
    return frozenset(names)


def check_graph_signature(workflow: str, step: Step) -> None:
    """Check a step's signature against what the graph will pass it (DefinitionError)."""
    where = f"workflow {workflow!r} step {step.name!r}"
    signature = step.signature
    if signature.known:
        if signature.positional_only and (step.depends_on and not step.is_map):
            raise DefinitionError(
                f"{where}: parameter {signature.positional_only[0]!r} is positional-only; "
                "dependencies are passed by keyword"
            )
        if step.is_map:
            if signature.first == INPUT and not signature.positional_only:
                raise DefinitionError(
                    f"{where}: a map step's first parameter receives the element; "
                    f"name it something other than {INPUT!r} (which asks for the run's input)"
                )
            items = [name for name in signature.names if name != INPUT]
            if not items and not signature.positional_only and not signature.var_positional:
                raise DefinitionError(
                    f"{where}: a map step needs a parameter for the element it is given"
                )
            extra = [name for name in items[1:] if name not in signature.defaults]
            if extra:
                raise DefinitionError(
                    f"{where}: a map step takes one element (and optionally `input`); "
                    f"parameter {extra[0]!r} names nothing it is given"
                )
        elif step.depends_on:
            for parameter in signature.names:
                if parameter != INPUT and parameter not in step.depends_on:
                    raise DefinitionError(
                        f"{where}: parameter {parameter!r} names no dependency "
                        f"(depends_on={list(step.depends_on)!r})"
                    )
            for dependency in step.depends_on:
                if not signature.accepts(dependency):
                    raise DefinitionError(
                        f"{where}: dependency {dependency!r} is missing from the signature "
                        "(each dependency's output is passed as a keyword argument named "
                        "after it; add the parameter, or **kwargs)"
                    )
    when_signature = step.when_signature
    if when_signature is not None and when_signature.positional_only:
        raise DefinitionError(
            f"{where}: when's parameter {when_signature.positional_only[0]!r} is "
            "positional-only; when is called with the step's arguments by keyword"
        )
    if when_signature is not None and when_signature.known and not when_signature.var_keyword:
        names = call_names(step)
        if names is not None:
            unknown = [name for name in when_signature.names if name not in names]
            unknown = [name for name in unknown if name not in when_signature.defaults]
            if unknown:
                raise DefinitionError(
                    f"{where}: when's parameter {unknown[0]!r} is not one of the step's "
                    f"arguments ({', '.join(sorted(names)) or 'none'})"
                )


class Flow:
    """A workflow defined with decorators, steps running in the order they are declared.

        flow = pgflow.Flow("process_data")

        @flow.step
        def validate(state): ...

        @flow.step(timeout=5.0, max_attempts=5)
        def transform(state): ...

    The decorator returns the function unchanged, so steps stay plain, testable functions.
    """

    def __init__(
        self, name: str, *, queue: str = "default", version: str | int | None = None
    ) -> None:
        if not isinstance(name, str) or not name:
            raise DefinitionError(f"Flow name must be a non-empty string, got {name!r}")
        self.name = name
        self.queue = _check_step_queue(f"Flow {name!r}", queue) or "default"
        if version is not None and (
            isinstance(version, bool) or not isinstance(version, (str, int))
        ):
            raise DefinitionError(
                f"Flow {name!r}: version must be a string or an int, got {version!r}"
            )
        self.version = version
        self._steps: list[Step] = []
        self._workflow: Workflow | None = None
        from pgflow.graph.registry import flows

        flows.add(self)

    @overload
    def step(self, fn: F, /) -> F: ...

    @overload
    def step(
        self, fn: None = None, /, *, name: str | None = None, **options: Any
    ) -> Callable[[F], F]: ...

    def step(
        self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None, **options: Any
    ) -> Any:
        """Add a step; use bare (`@flow.step`) or with options (`@flow.step(timeout=5.0)`)."""
        if isinstance(fn, str):
            raise DefinitionError(
                f"workflow {self.name!r}: name a step with @flow.step(name={fn!r}), "
                "not a positional string"
            )
        if fn is not None:
            return self._add(fn, name, options)

        def decorate(func: Callable[..., Any]) -> Any:
            return self._add(func, name, options)

        # Validate options now, so a typo fails at the decorator line, not at decoration.
        _check_options_only(self.name, name, options, kind=STEP)
        return decorate

    @overload
    def map(self, fn: F, /) -> F: ...

    @overload
    def map(
        self,
        fn: None = None,
        /,
        *,
        over: str | None = None,
        name: str | None = None,
        **options: Any,
    ) -> Callable[[F], F]: ...

    def map(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        over: str | None = None,
        name: str | None = None,
        **options: Any,
    ) -> Any:
        """Add a map step: its function runs once per element of `over`'s output (of the
        run's input when `over` is None), in parallel; its output is the list of results in
        element order. `@flow.map` or `@flow.map(over="fetch", max_attempts=5)`."""
        if isinstance(fn, str):
            raise DefinitionError(
                f"workflow {self.name!r}: say which step a map maps over with "
                f"@flow.map(over={fn!r})"
            )
        options = {**options, "over": over}
        if fn is not None:
            return self._add(fn, name, options, kind=MAP)

        def decorate(func: Callable[..., Any]) -> Any:
            return self._add(func, name, options, kind=MAP)

        _check_options_only(self.name, name, options, kind=MAP)
        return decorate

    def wait_for(
        self,
        name: str,
        *,
        depends_on: Iterable[str] = (),
        timeout: float | None = None,
        on_timeout: str = "fail",
    ) -> str:
        """Add a step with no function that completes when `app.signal(run, name, payload)`
        arrives, its output being the payload; nothing is held while it waits. After
        `timeout` seconds without a signal it fails (no retries) or, with
        `on_timeout="skip"`, is skipped. Returns the step's name (for depends_on)."""
        step = _handlerless_step(
            self.name,
            name,
            WAIT,
            depends_on,
            wait_timeout=_check_wait_timeout(f"workflow {self.name!r} step {name!r}", timeout),
            on_timeout=on_timeout,
        )
        return self._add_handlerless(step)

    def sleep(
        self,
        name: str,
        seconds: float | None = None,
        *,
        until: Callable[..., Any] | None = None,
        depends_on: Iterable[str] = (),
    ) -> str:
        """Add a durable delay: a step with no function that completes `seconds` after it
        becomes ready, or at the aware datetime `until(...)` returns (called like `when`,
        with the step's arguments). Its output is its value (its dependencies' outputs).
        No thread sleeps: it is a scheduled task. Returns the step's name."""
        where = f"workflow {self.name!r} step {name!r}"
        if (seconds is None) == (until is None):
            raise DefinitionError(f"{where}: a sleep needs seconds or until=, exactly one")
        step = _handlerless_step(
            self.name,
            name,
            SLEEP,
            depends_on,
            sleep_seconds=None if seconds is None else _check_sleep_seconds(where, seconds),
            until=_check_when(where, until),
        )
        return self._add_handlerless(step)

    def subflow(self, name: str, flow: Any, *, depends_on: Iterable[str] = ()) -> str:
        """Add a step that runs `flow` as a child run, with the step's value (its
        dependencies' outputs) as the child's input; it completes with the child's result
        or fails with its error, and does not retry itself. Returns the step's name."""
        step = _handlerless_step(self.name, name, SUBFLOW, depends_on, child=flow)
        return self._add_handlerless(step)

    def _add_handlerless(self, step: Step) -> str:
        if any(existing.name == step.name for existing in self._steps):
            raise DefinitionError(f"workflow {self.name!r}: duplicate step name {step.name!r}")
        self._steps.append(step)
        self._workflow = None
        return step.name

    def add_step(self, name: str, fn: Callable[..., Any], **options: Any) -> None:
        """Add a step without decorator syntax (e.g. for functions defined elsewhere)."""
        self._add(fn, name, options)

    def _add(self, fn: F, name: str | None, options: Mapping[str, Any], *, kind: str = STEP) -> F:
        step_name = name if name is not None else getattr(fn, "__name__", None)
        step = _make_step(self.name, step_name, fn, options, kind=kind)
        if any(existing.name == step.name for existing in self._steps):
            raise DefinitionError(f"workflow {self.name!r}: duplicate step name {step.name!r}")
        self._steps.append(step)
        self._workflow = None
        return fn

    @property
    def workflow(self) -> Workflow:
        """The validated Workflow for the steps declared so far (built once, then reused)."""
        workflow = self._workflow
        if workflow is None:
            workflow = self._workflow = Workflow(
                self.name, tuple(self._steps), queue=self.queue, version=self.version
            )
        return workflow

    @property
    def plan(self) -> FlowPlan:
        """The validated plan (graph-wide checks run here, at first use)."""
        return self.workflow.plan

    def to_mermaid(self) -> str:
        """The flow drawn as a Mermaid flowchart (checks the graph first)."""
        from pgflow.graph.mermaid import to_mermaid

        return to_mermaid(self.workflow)

    def __repr__(self) -> str:
        return f"Flow({self.name!r}, steps={[s.name for s in self._steps]!r})"


def handlerless_marker(*args: Any, **kwargs: Any) -> Any:
    """The `fn` of a wait, sleep or sub-flow step: never called (the stores settle them)."""
    raise RuntimeError("a handlerless step (wait, sleep, sub-flow) has no function to call")


def _handlerless_step(
    workflow: str, name: object, kind: str, depends_on: object, **options: Any
) -> Step:
    if not isinstance(name, str) or not name:
        raise DefinitionError(
            f"workflow {workflow!r}: step name must be a non-empty string, got {name!r}"
        )
    where = f"workflow {workflow!r} step {name!r}"
    step = Step(
        name,
        handlerless_marker,
        depends_on=_dependency_names(where, name, depends_on),
        kind=kind,
        **options,
    )
    _check_handlerless(where, step)
    return step


def _check_handlerless(where: str, step: Step) -> None:
    """The options of a wait, sleep or sub-flow, checked like a function step's."""
    if step.when is not None or step.over is not None:
        raise DefinitionError(f"{where}: a {step.kind} step takes no when= or over=")
    if step.kind == WAIT:
        _check_wait_timeout(where, step.wait_timeout)
        if step.on_timeout not in ON_TIMEOUT:
            raise DefinitionError(
                f"{where}: on_timeout must be 'fail' or 'skip', got {step.on_timeout!r}"
            )
    elif step.kind == SLEEP:
        if (step.sleep_seconds is None) == (step.until is None):
            raise DefinitionError(f"{where}: a sleep needs seconds or until=, exactly one")
        if step.sleep_seconds is not None:
            _check_sleep_seconds(where, step.sleep_seconds)
        _check_when(where, step.until)
        signature = step.when_signature
        if signature is not None and signature.positional_only and step.depends_on:
            raise DefinitionError(
                f"{where}: until's parameter {signature.positional_only[0]!r} is "
                "positional-only; until is called with the step's arguments by keyword"
            )
        if signature is not None and signature.known and step.depends_on:
            allowed = {*step.depends_on, INPUT}
            unknown = [
                n for n in signature.names if n not in allowed and n not in signature.defaults
            ]
            if unknown and not signature.var_keyword:
                raise DefinitionError(
                    f"{where}: until's parameter {unknown[0]!r} is not one of the step's "
                    f"arguments ({', '.join(sorted(allowed))})"
                )
    elif step.kind == SUBFLOW and step.child is None:
        raise DefinitionError(f"{where}: a sub-flow needs the flow it runs")
    if step.kind != WAIT and (step.wait_timeout is not None or step.on_timeout != "fail"):
        raise DefinitionError(f"{where}: timeout= and on_timeout= are for wait_for steps")
    if step.kind != SLEEP and (step.sleep_seconds is not None or step.until is not None):
        raise DefinitionError(f"{where}: seconds and until= are for sleep steps")
    if step.kind != SUBFLOW and step.child is not None:
        raise DefinitionError(f"{where}: a child flow is for subflow steps")
    if step.timeout is not None or step.backoff is not None or step.start_delay:
        raise DefinitionError(
            f"{where}: a {step.kind} step runs no function: timeout, backoff and start_delay "
            "do not apply"
        )


def _check_wait_timeout(where: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DefinitionError(f"{where}: timeout must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise DefinitionError(f"{where}: timeout must be > 0 seconds, got {value!r}")
    return float(value)


def _check_sleep_seconds(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DefinitionError(f"{where}: a sleep's seconds must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise DefinitionError(f"{where}: a sleep's seconds must be >= 0, got {value!r}")
    return float(value)


def _check_options_only(
    workflow: str, name: str | None, options: Mapping[str, Any], *, kind: str
) -> None:
    """Validate decorator options before the function is known, so a typo fails at the
    decorator line; signature checks wait for the function."""
    _make_step(workflow, name or "<step>", _any_arguments, options, kind=kind, signature=False)


def _any_arguments(*args: Any, **kwargs: Any) -> Any:
    """Stand-in callable used to validate decorator options before the function is known."""
    return args[0] if args else None


def qualified_name(obj: object) -> str:
    """`module.Class` for a class, the module's name for a module, else the type's name."""
    if inspect.ismodule(obj):
        return obj.__name__
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _from_seed(obj: object) -> Workflow:
    """Build a Workflow from `__workflow_steps__`: a callable giving, or a list of, pairs.

    A pair is `(name, function)`; a third item, a mapping, may set step options.
    """
    name = qualified_name(obj)
    seed: Any = obj
    source = seed.__workflow_steps__
    if callable(source):
        try:
            source = source()
        except Exception as exc:
            raise DefinitionError(
                f"workflow {name!r}: __workflow_steps__() raised {type(exc).__name__}: {exc}"
            ) from exc
    if isinstance(source, (str, bytes, Mapping)) or not isinstance(source, Iterable):
        raise DefinitionError(
            f"workflow {name!r}: __workflow_steps__ must give a list of (name, function) "
            f"pairs, got {type(source).__name__}"
        )
    steps: list[Step] = []
    seen: set[str] = set()
    for position, pair in enumerate(source):
        if not isinstance(pair, (tuple, list)) or len(pair) not in (2, 3):
            raise DefinitionError(
                f"workflow {name!r}: step #{position} must be a (name, function) pair, got {pair!r}"
            )
        options: Any = pair[2] if len(pair) == 3 else {}
        if not isinstance(options, Mapping):
            raise DefinitionError(
                f"workflow {name!r} step {pair[0]!r}: options must be a mapping, got {options!r}"
            )
        step = _make_step(name, pair[0], pair[1], options)
        if step.name in seen:
            raise DefinitionError(f"workflow {name!r}: duplicate step name {step.name!r}")
        seen.add(step.name)
        steps.append(step)
    return Workflow(name, tuple(steps))


# Resolved seed-form workflows by the identity of the class, module or object defining
# them (never by its __eq__: two equal objects may define different steps), held weakly so
# a dropped definition frees its entry.
_seed_cache: dict[int, tuple[weakref.ref[Any], Workflow]] = {}
#: How many seed objects that cannot be weakly referenced keep their resolved workflow.
STRONG_CACHE_SIZE = 64
# Those are cached by id too, each entry holding its object alive (so its id cannot be
# reused while cached); the least recently used go first.
_strong_cache: OrderedDict[int, tuple[object, Workflow]] = OrderedDict()
_cache_lock = threading.Lock()


def _cached(obj: object) -> Workflow | None:
    key = id(obj)
    entry = _seed_cache.get(key)
    if entry is not None and entry[0]() is obj:
        return entry[1]
    held = _strong_cache.get(key)
    if held is not None and held[0] is obj:
        with _cache_lock:
            if key in _strong_cache:
                _strong_cache.move_to_end(key)
        return held[1]
    return None


def _forget_seed(key: int, ref: weakref.ref[Any]) -> None:
    """The definition was collected: drop its entry (unless its id was reused since).
    No lock: the collector may call this in a thread that holds `_cache_lock`; at worst a
    racing new entry is dropped too, which only costs a rebuild."""
    entry = _seed_cache.get(key)
    if entry is not None and entry[0] is ref:
        _seed_cache.pop(key, None)


def _remember(obj: object, workflow: Workflow) -> None:
    key = id(obj)
    try:
        ref = weakref.ref(obj, lambda dead: _forget_seed(key, dead))
    except TypeError:
        ref = None
    with _cache_lock:
        if ref is not None:
            _seed_cache[key] = (ref, workflow)
            return
        _strong_cache[key] = (obj, workflow)
        _strong_cache.move_to_end(key)
        while len(_strong_cache) > STRONG_CACHE_SIZE:
            _strong_cache.popitem(last=False)


def resolve_workflow(obj: object) -> Workflow:
    """The Workflow for a Flow, a Workflow, or a seed-form class or module (cached)."""
    kind = type(obj)
    if kind is Workflow:
        return obj  # type: ignore[return-value]
    if kind is Flow:
        return obj.workflow  # type: ignore[attr-defined, no-any-return]
    cached = _cached(obj)
    if cached is not None:
        return cached
    if isinstance(obj, Workflow):
        return obj
    if isinstance(obj, Flow):
        return obj.workflow
    if not hasattr(obj, "__workflow_steps__"):
        raise DefinitionError(
            f"{qualified_name(obj)!r} is not a workflow: expected a pgflow.Flow, a "
            "pgflow.Workflow, or a class or module with __workflow_steps__"
        )
    workflow = _from_seed(obj)
    _remember(obj, workflow)
    return workflow
