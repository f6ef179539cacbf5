"""`python -m benchmarks.peers.graph_worker MODULE URL WORKLOAD SETTING`: one Python worker
process of a flow system; it calls `serve_graph` of benchmarks.peers.MODULE, which prints
"ready" once serving and returns after SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading

from benchmarks.peers import spec


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: graph_worker MODULE URL WORKLOAD SETTING", file=sys.stderr)
        return 2
    module, url, workload, setting = argv
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    spec.load(module).serve_graph(url, workload, setting, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
