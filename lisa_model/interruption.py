"""Stopping a running inference: a cancelled request, a deadline, a node shutting down.

A robot cannot wait for a 512-token answer it no longer wants, so every transformer layer of the model checks a
caller's `should_stop()` before it runs (a forward pre-hook). A stop therefore takes effect within one layer of the
stage that is running - one decode step is many layers - and works the same for the CLIP tower, SAM's image encoder
and the language model, whatever the model family.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable, Iterator

from torch import nn

StopCheck = Callable[[], "str | None"]  # returns the reason to stop now, or None to go on

# Repeated blocks of every tower: LLaMA / CLIP `...layers.N`, SAM's ViT `...blocks.N`.
_LAYER_NAME = re.compile(r"(^|\.)(layers|blocks)\.\d+$")


class InferenceInterrupted(RuntimeError):
    """Raised out of a model call when `should_stop()` gave a reason.

    reason: what the caller's check said; stage: the inference stage that was running; output_ids / text: what
    had been generated before the stop (filled in by the predictor when it knows them)."""

    def __init__(self, reason: str, stage: str = "", output_ids: list[int] | None = None, text: str = ""):
        super().__init__(reason)
        self.reason, self.stage = reason, stage
        self.output_ids = list(output_ids or [])
        self.text = text


def interrupt_points(model: nn.Module) -> list[nn.Module]:
    """The repeated layers of every tower of `model` (checked before each runs)."""
    return [m for name, m in model.named_modules() if _LAYER_NAME.search(name)]


@contextmanager
def stoppable(modules: list[nn.Module], should_stop: StopCheck | None) -> Iterator[None]:
    """Within the block, every module in `modules` first asks `should_stop()`; a reason raises
    InferenceInterrupted out of the running forward. No-op when `should_stop` is None."""
    if should_stop is None:
        yield
        return

    def check(module, args):
        reason = should_stop()
        if reason:
            raise InferenceInterrupted(reason)

    handles = [m.register_forward_pre_hook(check) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
