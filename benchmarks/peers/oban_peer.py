"""Oban for Python (`oban` on PyPI).

Its releases require Python >= 3.12 while this project's environment runs 3.11, so here the
row says why it is absent. On 3.12+ the package installs, but no driver for it is written
yet, and the row says that instead of guessing at its API.
"""

from __future__ import annotations

import importlib.util
import sys

from benchmarks.peers import spec


class ObanPeer(spec.Peer):
    name = "Oban (oban)"
    module = "oban_peer"
    config = "-"

    def check(self) -> None:
        if importlib.util.find_spec("oban") is None:
            version = ".".join(str(part) for part in sys.version_info[:2])
            raise spec.NotInstalled(
                f"not installed (oban requires Python >= 3.12; this interpreter is {version})"
            )
        raise RuntimeError("oban is installed, but this runner has no oban driver yet")
