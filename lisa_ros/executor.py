"""The node's executor: rclpy's MultiThreadedExecutor without its busy loop over queued work.

rclpy up to 10.0.2 (Kilted's 9.1.x included; fixed upstream in ros2/rclpy#1547) yields a callback that has been
handed to the thread pool again and again until a worker starts it, so the spinning thread loops without waiting
and holds the GIL. Measured here with a 10 Hz image subscription on an otherwise idle 2-core machine, 24 s runs of
~240 frames: rclpy's executor took 91 and 49 frames in two of three runs (in bursts, with gaps of seconds) and all
of them in the third; this one took 224, 231 and 212. For this node that meant a stale "latest frame", irregular
/diagnostics and late timers. This executor skips work that is queued but not yet started; once a worker starts
it, rclpy's own bookkeeping (entity flags, guard conditions) applies unchanged.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from rclpy.executors import MultiThreadedExecutor


class _TrackingPool(ThreadPoolExecutor):
    """A thread pool that knows which submitted callables have not started yet."""

    def __init__(self, max_workers: int):
        super().__init__(max_workers)
        self._waiting: set[int] = set()
        self._lock = threading.Lock()

    def is_waiting(self, work) -> bool:
        with self._lock:
            return id(work) in self._waiting

    def submit(self, fn, /, *args, **kwargs):
        with self._lock:
            self._waiting.add(id(fn))

        def start():
            with self._lock:
                self._waiting.discard(id(fn))
            return fn(*args, **kwargs)

        return super().submit(start)


class QueueAwareExecutor(MultiThreadedExecutor):
    """MultiThreadedExecutor whose spin thread waits instead of re-queueing work a worker has not picked up yet."""

    def __init__(self, num_threads: int, context=None):
        super().__init__(num_threads=num_threads, context=context)
        self._executor.shutdown(wait=False)  # rclpy's plain pool: replaced before any work reaches it
        self._executor = _TrackingPool(num_threads)

    def _wait_for_ready_callbacks(self, *args, **kwargs):
        for work in super()._wait_for_ready_callbacks(*args, **kwargs):
            if not self._executor.is_waiting(work[0]):
                yield work
