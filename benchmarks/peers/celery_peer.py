"""Celery with the Redis broker at 127.0.0.1:6379 (its documented default setup): the
default prefork pool with --concurrency set to the shared value, prefetch multiplier 4 and
no result backend (defaults). Queue names carry the run's database name, so parallel runs
never share a Redis list; the lists are deleted afterwards."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from benchmarks.peers import sink, spec
from benchmarks.peers.procs import wait_for_stop

BROKER = "redis://127.0.0.1:6379/0"


def _suffix(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _app() -> Any:
    from celery import Celery  # type: ignore[import-untyped]

    app = Celery("peers", broker=BROKER)
    app.conf.update(
        task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False
    )

    @app.task(name="peers.noop")  # type: ignore[untyped-decorator]
    def noop(i: int) -> None:
        sink.report("d")

    @app.task(name="peers.stamp")  # type: ignore[untyped-decorator]
    def stamp(seq: int, sent_ns: int) -> None:
        sink.report_start({"seq": seq, "sent_ns": sent_ns})

    return app


def serve(url: str, queue: str, concurrency: int, stop: Any) -> None:
    from celery.signals import worker_ready  # type: ignore[import-untyped]

    parent = os.getppid()
    app = _app()

    def ready(**_: Any) -> None:
        sink.report(f"r {os.getpid()}")

    def watch() -> None:
        wait_for_stop(stop, parent)
        os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown

    # The worker prints its start-up banner on stdout, where the results table goes.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    worker_ready.connect(ready, weak=False)
    threading.Thread(target=watch, daemon=True).start()
    app.worker_main(
        [
            "worker",
            "-Q",
            f"{queue}_{_suffix(url)}",
            "-c",
            str(concurrency),
            "-n",
            f"peer{os.getpid()}@%h",
            "--loglevel=WARNING",
        ]
    )


class CeleryPeer(spec.Peer):
    name = "Celery"
    module = "celery_peer"
    config = (
        f"Redis broker 127.0.0.1:6379; prefork pool -c {spec.CONCURRENCY} per process, "
        "prefetch multiplier 4, no result backend (defaults); completions counted by the task"
    )
    bulk_note = "no bulk API: 1,000 apply_async calls on one producer"
    wide_drain_skip = (
        "not measured: the prefork pool runs one child process per slot, so "
        f"-c {spec.WIDE_CONCURRENCY} would start {spec.WIDE_CONCURRENCY} processes per worker "
        f"(the -c {spec.CONCURRENCY} worker and its {spec.CONCURRENCY} children already peak at "
        "about 500 MB RSS together)"
    )

    def check(self) -> None:
        spec.require_modules("celery", "redis")
        import redis

        try:
            redis.Redis.from_url(BROKER, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            raise spec.NotInstalled(f"Redis broker unreachable at {BROKER}: {exc}") from exc

    def setup(self, url: str) -> None:
        self.suffix = _suffix(url)
        self.app = _app()
        self.noop = self.app.tasks["peers.noop"]
        self.stamp = self.app.tasks["peers.stamp"]
        self.producer_cm = self.app.producer_or_acquire()
        self.producer = self.producer_cm.__enter__()
        self.queues: set[str] = set()

    def close(self) -> None:
        import redis

        self.producer_cm.__exit__(None, None, None)
        client = redis.Redis.from_url(BROKER)
        if self.queues:  # the lists, and kombu's routing keys for them
            client.delete(
                *self.queues,
                *(f"_kombu.binding.{q}" for q in self.queues),
                *(f"_kombu.binding_permanent.{q}" for q in self.queues),
            )
        client.close()
        self.app.close()

    def _queue(self, queue: str) -> str:
        name = f"{queue}_{self.suffix}"
        self.queues.add(name)
        return name

    def insert_one(self, i: int) -> None:
        self.noop.apply_async((i,), queue=self._queue("inserts"), producer=self.producer)

    def insert_bulk(self, start: int, count: int) -> None:
        queue = self._queue("inserts")
        for i in range(start, start + count):
            self.noop.apply_async((i,), queue=queue, producer=self.producer)

    def insert_noops(self, queue: str, count: int) -> None:
        self.insert_bulk_on(queue, count)

    def insert_bulk_on(self, queue: str, count: int) -> None:
        name = self._queue(queue)
        for i in range(count):
            self.noop.apply_async((i,), queue=name, producer=self.producer)

    def counts_by_sink(self) -> bool:
        return True

    def insert_stamp(self, seq: int, sent_ns: int) -> None:
        self.stamp.apply_async(
            (seq, sent_ns), queue=self._queue(spec.STAMP_QUEUE), producer=self.producer
        )
