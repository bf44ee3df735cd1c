"""A bounded, first-come-first-served gate in front of the model: one inference at a time, at most
`queue_size` requests waiting, the rest refused at once (the caller answers "busy").

A waiting request can give up its place (a cancelled action goal, a node shutting down): `turn(abandon=...)`
polls its check while it waits, so nobody waits for a request that no longer wants an answer.
"""
from __future__ import annotations

import threading
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator


class Busy(RuntimeError):
    """The queue is full (or, under the reject policy, the model is busy)."""


class Abandoned(RuntimeError):
    """The waiter gave up before its turn came; the message is the reason its check returned."""


class RequestQueue:
    POLL_S = 0.05  # how often a waiter re-checks its abandon condition

    def __init__(self, queue_size: int, policy: str = "fifo"):
        if policy not in ("fifo", "reject"):
            raise ValueError(f"unknown queue policy {policy!r}")
        self.queue_size = max(0, int(queue_size))
        self.policy = policy
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()
        self._running = False

    @property
    def pending(self) -> int:
        """Requests holding a place: running + waiting."""
        with self._cond:
            return len(self._waiting) + self._running

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def position(self, ticket: object) -> int:
        """How many are ahead of `ticket` (the running one included); 0 once it runs or is unknown."""
        with self._cond:
            return self._waiting.index(ticket) + self._running if ticket in self._waiting else 0

    @contextmanager
    def turn(self, wait: bool = True, bounded: bool = True, abandon: Callable[[], str | None] | None = None,
             ticket: object | None = None) -> Iterator[None]:
        """Hold the model for the duration of the block. Raises Busy instead of waiting when the queue is full,
        when the policy is 'reject' and someone is running, or when wait=False and someone is running.
        bounded=False always waits its turn (lifecycle transitions that must not be refused).
        abandon: checked while waiting; a reason raises Abandoned and frees the place.
        ticket: any object, to ask `position(ticket)` while waiting."""
        me = object() if ticket is None else ticket
        with self._cond:
            pending = len(self._waiting) + self._running
            limit = self.queue_size if (wait and self.policy == "fifo") else 0
            if bounded and pending > limit:
                raise Busy(f"busy: {pending} request(s) ahead (queue_size={self.queue_size}, "
                           f"policy={self.policy})")
            self._waiting.append(me)
            while self._running or self._waiting[0] is not me:
                reason = abandon() if abandon is not None else None
                if reason:
                    self._waiting.remove(me)
                    self._cond.notify_all()
                    raise Abandoned(reason)
                self._cond.wait(self.POLL_S if abandon is not None else None)
            self._waiting.popleft()
            self._running = True
        try:
            yield
        finally:
            with self._cond:
                self._running = False
                self._cond.notify_all()
