"""What a step function accepts, read once at definition so a graph step's parameters can be
checked against its dependencies before anything runs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import attrs

#: The parameter name through which a graph step asks for the run's input.
INPUT = "input"


@attrs.frozen
class StepSignature:
    """The parts of a step function's signature the engine relies on.

    `known` is False when Python cannot inspect the callable (some builtins): such a step
    is called with one positional value and nothing is checked.
    """

    known: bool = True
    #: Parameters that can be passed by keyword, in declaration order.
    names: tuple[str, ...] = ()
    #: Of those, the ones with a default value.
    defaults: frozenset[str] = frozenset()
    #: Parameters without a default that can only be passed positionally.
    positional_only: tuple[str, ...] = ()
    #: Takes `**kwargs`: accepts any dependency by name.
    var_keyword: bool = False
    #: Takes `*args`.
    var_positional: bool = False

    @property
    def first(self) -> str | None:
        """The first parameter's name (a root's input, a map's element), if it has one."""
        return self.names[0] if self.names else None

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(name for name in self.names if name not in self.defaults)

    def accepts(self, name: str) -> bool:
        return self.var_keyword or name in self.names


def read_signature(fn: Callable[..., Any]) -> StepSignature:
    """The StepSignature of `fn` (of its `__call__` for callable objects)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return StepSignature(known=False)
    names: list[str] = []
    defaults: set[str] = set()
    positional_only: list[str] = []
    var_keyword = var_positional = False
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            var_positional = True
        elif parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            if parameter.default is inspect.Parameter.empty:
                positional_only.append(parameter.name)
        else:
            names.append(parameter.name)
            if parameter.default is not inspect.Parameter.empty:
                defaults.add(parameter.name)
    return StepSignature(
        names=tuple(names),
        defaults=frozenset(defaults),
        positional_only=tuple(positional_only),
        var_keyword=var_keyword,
        var_positional=var_positional,
    )
