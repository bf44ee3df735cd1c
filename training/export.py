"""`lisa-export`: a training run -> a model LISA tools can load (LoRA merged into the weights).

    lisa-export --run runs/lisa [--layout ours|released|both] [--out DIR] [--dtype bfloat16]

ours: our safetensors layout (LisaSegmenter.from_pretrained); released: the LISA layout (config.json of
LISAForCausalLM + sharded .bin, CLIP beside it as its own folder), which LISA's own scripts read.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lisa_model import LisaSegmenter
from lisa_model.export import export_released, export_vision_tower

from .config import TrainConfig
from .lora import merge_lora


def export_trainer(trainer, out: Path, layout: str = "ours", dtype: torch.dtype = torch.bfloat16) -> list[Path]:
    """Merge the trainer's LoRA into its model (in place) and write it in `layout` ("ours", "released", "both")."""
    model = merge_lora(trainer.model).eval()
    seg = LisaSegmenter(model, trainer.segmenter.tokenizer, trainer.segmenter.clip_preprocessor)
    written = []
    if layout in ("ours", "both"):
        seg.save_pretrained(out / "ours")
        written.append(out / "ours")
    if layout in ("released", "both"):
        clip_dir = export_vision_tower(seg, out / "clip")
        export_released(seg, out_dir=out / "released", dtype=dtype, vision_tower=str(Path(clip_dir).resolve()))
        written += [out / "released", out / "clip"]
    return written


def main(argv: list[str] | None = None) -> int:
    from .train import CHECKPOINT_DIR, Trainer

    p = argparse.ArgumentParser(prog="lisa-export", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="output_dir of a lisa-train run")
    p.add_argument("--layout", default="ours", choices=["ours", "released", "both"])
    p.add_argument("--out", help="default: <run>/export")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    a = p.parse_args(argv)
    run = Path(a.run)
    cfg = TrainConfig.load(None, **json.loads((run / "train_config.json").read_text()))
    trainer = Trainer(cfg, write_run_files=False)
    trainer.load_checkpoint(run / CHECKPOINT_DIR)
    for path in export_trainer(trainer, Path(a.out or run / "export"), a.layout, getattr(torch, a.dtype)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
