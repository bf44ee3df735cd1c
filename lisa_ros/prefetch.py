"""Frame prefetch: encode the newest colour frame (CLIP tokens + SAM embedding) while the model is idle.

A robot mostly asks about what it sees now; with the frame already encoded, that question costs what a follow-up
question costs (the language model and the mask decoder only). A request always wins: prefetch runs only when
nobody waits, and a running encoding stops within one encoder layer as soon as a request wants another frame.
When the request wants the very frame being encoded, the encoding goes on and the request reuses it.

The price is power: while the robot is idle, the device encodes up to `prefetch_rate` frames per second.
"""
from __future__ import annotations

import threading
from collections import Counter

from .image_conversion import color_to_rgb
from .request_queue import Busy


class Prefetcher:
    def __init__(self, node):
        self.node = node
        self._lock = threading.Lock()
        self._wanted: Counter[int] = Counter()  # frame sequence numbers that requests are waiting for
        self._in_flight: int | None = None
        self.encoded_sequence = -1  # the newest frame whose encoding is in the model's image cache
        self.encoded = 0  # frames encoded by prefetch
        self.abandoned = 0  # encodings stopped for a request that wanted another frame

    # ----- requests ---------------------------------------------------------------------------------------------
    def want(self, sequence: int) -> None:
        """A request for frame `sequence` (0: an image of its own) is about to wait for the model."""
        with self._lock:
            self._wanted[sequence] += 1

    def unwant(self, sequence: int) -> None:
        with self._lock:
            self._wanted[sequence] -= 1
            if self._wanted[sequence] <= 0:
                del self._wanted[sequence]

    def _should_stop(self) -> str | None:
        reason = self.node.stop_reason
        if reason:
            return reason
        with self._lock:
            if any(seq != self._in_flight for seq in self._wanted):
                return "a request wants another frame"
        return None

    # ----- the idle loop (a timer at prefetch_rate, in its own callback group) ----------------------------------
    def tick(self) -> None:
        from lisa_model import InferenceInterrupted

        node = self.node
        frame = node.frames.latest()
        if frame is None or frame.sequence == self.encoded_sequence or node.queue.pending or node.segmenter is None:
            return
        try:
            with node.queue.turn(wait=False):
                segmenter = node.segmenter  # read under the turn: deactivate frees it only while holding one
                if segmenter is None:
                    return
                with self._lock:
                    self._in_flight = frame.sequence
                image = color_to_rgb(frame.color, max_pixels=node.settings.max_image_pixels)
                segmenter.set_image(image, should_stop=self._should_stop)
                self.encoded_sequence = frame.sequence
                self.encoded += 1
        except Busy:
            pass
        except InferenceInterrupted:
            self.abandoned += 1
        except Exception as e:  # noqa: BLE001 - a frame the model cannot use is the request's business
            node.get_logger().debug(f"prefetch skipped a frame: {type(e).__name__}: {e}")
        finally:
            with self._lock:
                self._in_flight = None
