"""Checkpoints that ship inside the library, by name: `LisaSegmenter.from_pretrained("lisa-demo")`.

`lisa-demo` is a small LISA trained by our own pipeline on synthetic household scenes (its model card:
lisa_model/weights/lisa-demo/README.md). It is what the demo runs without a download; it is not LISA-7B.
"""
from __future__ import annotations

from pathlib import Path

from .checkpoint import CheckpointError

WEIGHTS = Path(__file__).resolve().parent / "weights"
BUILTIN = {"lisa-demo": WEIGHTS / "lisa-demo"}


def builtin_folder(name: str | Path) -> Path | None:
    """The folder of a built-in checkpoint, None when `name` is not one."""
    folder = BUILTIN.get(str(name))
    if folder is not None and not (folder / "config.json").is_file():
        raise CheckpointError(f"built-in checkpoint {name!r} is missing from this installation ({folder})")
    return folder
