"""A progress bar on stderr (tqdm when installed, plain lines otherwise)."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """Counts measurement steps; `tick(label)` announces the next one."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar: Any = None
        self._count = 0
        self._total = total
        self._enabled = enabled
        if not enabled:
            return
        try:
            from tqdm import tqdm  # type: ignore[import-untyped]
        except ImportError:
            return
        self._bar = tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True)

    def tick(self, label: str) -> None:
        if not self._enabled:
            return
        if self._count:
            self._advance()
        self._count += 1
        if self._bar is not None:
            self._bar.set_description_str(label[:48])
        else:
            print(f"[{self._count}/{self._total}] {label}", file=sys.stderr, flush=True)

    def skip(self, steps: int) -> None:
        """Steps that will not run (a peer that is not installed)."""
        if self._bar is not None:
            self._bar.update(steps)

    def _advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            if self._count:
                self._bar.update(1)
            self._bar.close()
