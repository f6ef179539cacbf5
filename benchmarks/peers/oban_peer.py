"""Oban for Python (`oban` on PyPI), run under a Python >= 3.12 venv the peer builds itself.

`oban` requires Python >= 3.12 and this project runs 3.11, so both sides run in the venv of
`oban_venv`: the inserts go to an inserter process over a pipe (one line per call), and each
worker process execs the venv's interpreter (same pid, so its RSS is Oban's alone).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import IO, Any

from benchmarks.peers import oban_venv, spec

#: How the venv's interpreter starts `oban_child` (imported by name, so workers resolve).
_ENTRY = "from benchmarks.peers.oban_child import main; main()"


def serve(url: str, queue: str, concurrency: int, stop: Any) -> None:
    """Become the venv's Oban worker process; it stops on SIGTERM or when its parent dies.

    `stop` cannot cross the exec, so the runner's kill after its stop ends the process.
    """
    python = str(oban_venv.venv_python())
    argv = [python, "-c", _ENTRY, "serve", url, queue, str(concurrency)]
    os.execve(python, argv, oban_venv.child_env())


class ObanPeer(spec.Peer):
    name = "Oban (oban)"
    module = "oban_peer"
    config = (
        f"Oban(pool=Oban.create_pool(url)) defaults (pool of 1-10 connections, PostgreSQL "
        f"notifier, stager 1 s), queues={{q: {spec.CONCURRENCY}}} per process "
        f"({spec.WIDE_CONCURRENCY} in the x100 drains); Python 3.12 "
        f"venv, so each parent insert call also crosses a pipe to an inserter process"
    )
    bulk_note = "oban.enqueue_many([...1,000 NoopWorker.new(args, queue=q)])"

    def check(self) -> None:
        self.python: Path = oban_venv.ensure()

    def setup(self, url: str) -> None:
        self.inserter = subprocess.Popen(
            [str(self.python), "-c", _ENTRY, "insert", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=oban_venv.child_env(),
        )
        self.counter: spec.SqlCounter | None = None
        self._send("install")
        self.counter = spec.SqlCounter(url)

    def close(self) -> None:
        if self.counter is not None:
            self.counter.close()
        if self.inserter.stdin is not None:
            self.inserter.stdin.close()
        try:
            self.inserter.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.inserter.kill()
            self.inserter.wait(timeout=5)
        if self.inserter.stdout is not None:
            self.inserter.stdout.close()

    def _send(self, command: str) -> None:
        """One command to the inserter; raise with its error when it did not answer "ok"."""
        stdin: IO[str] | None = self.inserter.stdin
        stdout: IO[str] | None = self.inserter.stdout
        if stdin is None or stdout is None:
            raise RuntimeError("the Oban inserter has no pipes")
        stdin.write(command + "\n")
        stdin.flush()
        reply = stdout.readline().strip()
        if reply != "ok":
            code = self.inserter.poll()
            detail = reply or f"no reply (inserter exit code {code})"
            raise RuntimeError(f"oban inserter: {command.split()[0]}: {detail}")

    def insert_one(self, i: int) -> None:
        self._send(f"one inserts {i}")

    def insert_bulk(self, start: int, count: int) -> None:
        self._send(f"many inserts {start} {count}")

    def insert_noops(self, queue: str, count: int) -> None:
        for start in range(0, count, 1_000):
            self._send(f"many {queue} {start} {min(1_000, count - start)}")

    def completed(self, queue: str) -> int:
        """Completed jobs stay in oban_jobs (the pruner keeps them a day by default)."""
        if self.counter is None:
            return 0
        return self.counter.scalar(
            "SELECT count(*) FROM oban_jobs WHERE queue = %s AND state = 'completed'", (queue,)
        )

    def insert_stamp(self, seq: int, sent_ns: int) -> None:
        self._send(f"stamp {seq} {sent_ns}")
