"""A bounded, first-come-first-served gate in front of the model: one inference at a time, at most
`queue_size` requests waiting, the rest refused at once (the caller answers "busy")."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class Busy(RuntimeError):
    """The queue is full (or, under the reject policy, the model is busy)."""


class RequestQueue:
    def __init__(self, queue_size: int, policy: str = "fifo"):
        if policy not in ("fifo", "reject"):
            raise ValueError(f"unknown queue policy {policy!r}")
        self.queue_size = max(0, int(queue_size))
        self.policy = policy
        self._cond = threading.Condition()
        self._next_ticket = 0  # handed to the next arrival
        self._serving = 0  # ticket allowed to run now

    @property
    def pending(self) -> int:
        """Requests holding a ticket: running + waiting."""
        with self._cond:
            return self._next_ticket - self._serving

    @contextmanager
    def turn(self, wait: bool = True, bounded: bool = True) -> Iterator[None]:
        """Hold the model for the duration of the block. Raises Busy instead of waiting when the queue is full,
        when the policy is 'reject' and someone is running, or when wait=False and someone is running.
        bounded=False always waits its turn (lifecycle transitions that must not be refused)."""
        with self._cond:
            pending = self._next_ticket - self._serving
            limit = self.queue_size if (wait and self.policy == "fifo") else 0
            if bounded and pending > limit:
                raise Busy(f"busy: {pending} request(s) ahead (queue_size={self.queue_size}, "
                           f"policy={self.policy})")
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._serving += 1
                self._cond.notify_all()
