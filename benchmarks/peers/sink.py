"""A UDP sink: worker processes of any peer report "ready", "done" and start stamps to it.

UDP on the loopback needs no shared objects, so it works the same in spawned processes,
in Celery's forked pool children and in asyncio workers, and costs a few microseconds.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque

#: Environment variable that tells a worker process (and its children) where to report.
ENV = "PGFLOW_PEER_SINK"

_sender: socket.socket | None = None
_sender_pid = 0
_address: tuple[str, int] | None = None


def report(message: str) -> None:
    """Send one message to the sink named in the environment (no-op when there is none)."""
    global _sender, _sender_pid, _address
    if _address is None:
        where = os.environ.get(ENV)
        if not where:
            return
        host, port = where.rsplit(":", 1)
        _address = (host, int(port))
    if _sender is None or _sender_pid != os.getpid():  # a forked child gets its own socket
        _sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _sender_pid = os.getpid()
    _sender.sendto(message.encode(), _address)


def report_start(args: dict[str, object]) -> None:
    """Report how long after its insert a stamped job started (ns, wall clock)."""
    started = time.time_ns()
    sent = args.get("sent_ns")
    if isinstance(sent, int):
        report(f"s {args.get('seq')} {started - sent}")


class Sink:
    """The receiving end, in the parent: counts "done", queues stamps and ready signals."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self.address = f"127.0.0.1:{self._socket.getsockname()[1]}"
        self.done = 0
        self.first_done_ns = 0
        self.last_done_ns = 0
        self.ready: deque[str] = deque()
        self.stamps: deque[tuple[int, int]] = deque()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="peer-sink", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._socket.recv(256)
            except TimeoutError:
                continue
            except OSError:
                return
            kind, _, rest = data.decode().partition(" ")
            if kind == "d":
                now = time.perf_counter_ns()
                if not self.done:
                    self.first_done_ns = now
                self.done += 1
                self.last_done_ns = now
            elif kind == "r":
                self.ready.append(rest)
            elif kind == "s":
                seq, latency = rest.split()
                self.stamps.append((int(seq), int(latency)))

    def reset(self) -> None:
        self.done = 0
        self.first_done_ns = 0
        self.last_done_ns = 0
        self.ready.clear()
        self.stamps.clear()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self._socket.close()
