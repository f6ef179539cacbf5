"""The retry delay policy: exponential, optionally capped and jittered.

The arithmetic comes from the `backoff` package's wait generators (`backoff.expo`,
`backoff.full_jitter`), so pgflow's schedule matches what that library documents.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import attrs
import backoff as _backoff

from pgflow.errors import DefinitionError


def _positive_number(name: str, value: object, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DefinitionError(f"Backoff {name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise DefinitionError(f"Backoff {name} must be {bound}, got {value!r}")


def _check_base(_instance: Any, _attribute: Any, value: float) -> None:
    _positive_number("base", value)


def _check_factor(_instance: Any, _attribute: Any, value: float) -> None:
    _positive_number("factor", value, allow_zero=True)


def _check_max_delay(_instance: Any, _attribute: Any, value: float | None) -> None:
    if value is not None:
        _positive_number("max_delay", value, allow_zero=True)


def _check_jitter(_instance: Any, _attribute: Any, value: bool) -> None:
    if not isinstance(value, bool):
        raise DefinitionError(f"Backoff jitter must be True or False, got {value!r}")


@attrs.frozen
class Backoff:
    """Delay before retry n (n = 1 before attempt 2): `min(factor * base**n, max_delay)`.

    The default gives the original's 10 s, 100 s, 1000 s. With `jitter=True` the delay is
    drawn uniformly from [0, delay] ("full jitter"), which spreads retries of many runs.
    """

    base: float = attrs.field(default=10.0, validator=_check_base)
    factor: float = attrs.field(default=1.0, validator=_check_factor)
    max_delay: float | None = attrs.field(default=None, validator=_check_max_delay)
    jitter: bool = attrs.field(default=False, validator=_check_jitter)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry `retry` (1-based: retry 1 precedes attempt 2)."""
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 1:
            raise ValueError(f"retry must be an int >= 1, got {retry!r}")
        value = self._undelayed(retry)
        if self.jitter:
            value = float(_backoff.full_jitter(value))
        return value

    def delays(self, retries: int) -> list[float]:
        """The first `retries` delays, e.g. `Backoff().delays(3) == [10.0, 100.0, 1000.0]`."""
        return [self.delay(n) for n in range(1, retries + 1)]

    def _undelayed(self, retry: int) -> float:
        # backoff.expo yields factor * base**k for k = 0, 1, 2, ... after being primed,
        # capped at max_value; retry n is therefore its (n + 1)-th value.
        waits = _backoff.expo(base=self.base, factor=self.factor, max_value=self.max_delay)
        next(waits)  # prime the generator, as backoff's own decorators do
        try:
            value = next(itertools.islice(waits, retry, None))
        except OverflowError:
            # base**n no longer fits a float: the delay is "forever", bounded by the cap.
            return math.inf if self.max_delay is None else float(self.max_delay)
        return float(value)


DEFAULT_BACKOFF = Backoff()
