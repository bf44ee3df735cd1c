"""The node's executor: rclpy's MultiThreadedExecutor, with subscriptions taken on the spinning thread.

Two changes, both measured here with a 10 Hz best-effort image stream from another process (80 frames a stream, an
otherwise idle 2-core machine):
- rclpy up to 10.0.2 (Kilted's 9.1.x included; fixed upstream in ros2/rclpy#1547) yields a callback that has been
  handed to the thread pool again and again until a worker starts it, so the spinning thread loops without waiting
  and holds the GIL. This executor skips work that is queued but not yet started.
- With the take on a worker thread, the spinning thread's next wait often missed the frames that arrived meanwhile:
  frames were taken in bursts, up to a second late, and the sensor-data queue (depth 5) overflowed. rclpy's
  executor took 18-34 of 80, and skipping queued work alone 51-70. rclpy's SingleThreadedExecutor, which takes on
  the thread that waits, took all 80, and so does this executor: a subscription's callback runs on the spinning
  thread. The node's subscription callbacks only store a message, so nothing long ever runs there; services,
  actions and timers (inference among them) still go to the pool.
Once a worker starts a piece of work, rclpy's own bookkeeping (entity flags, guard conditions) applies unchanged.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from rclpy.executors import MultiThreadedExecutor
from rclpy.subscription import Subscription


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
    """MultiThreadedExecutor that takes subscriptions on its spinning thread and waits instead of re-queueing work
    a worker has not picked up yet. Subscription callbacks must be short: they delay every other callback."""

    def __init__(self, num_threads: int, context=None):
        super().__init__(num_threads=num_threads, context=context)
        self._executor.shutdown(wait=False)  # rclpy's plain pool: replaced before any work reaches it
        self._executor = _TrackingPool(num_threads)

    def _wait_for_ready_callbacks(self, *args, **kwargs):
        for work in super()._wait_for_ready_callbacks(*args, **kwargs):
            task, entity, _ = work
            if self._executor.is_waiting(task):
                continue
            if isinstance(entity, Subscription) and not task.executing() and not task.done():
                task()  # the take and the callback, here; an async callback that suspends goes on in the pool
                if task.done():
                    task.result()  # a callback's exception propagates, as from rclpy's own executors
                    continue
            yield work
