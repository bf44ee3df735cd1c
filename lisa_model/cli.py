"""`lisa-segment`: one image, one instruction -> overlay PNG, one PNG per mask, a JSON, the answer printed."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from .checkpoint import CheckpointError
from .predictor import TINY_RANDOM, LisaSegmenter
from .visualization import draw_overlay


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lisa-segment", description="Reasoning segmentation of one image with LISA.")
    p.add_argument("--model", required=True, help=f"checkpoint folder, hub id, or {TINY_RANDOM!r} (offline, "
                                                  "random weights: meaningless masks)")
    p.add_argument("--vision-tower", default=None, help="CLIP folder or hub id (default: the checkpoint's)")
    p.add_argument("--base-model", default=None, help="base model folder of a checkpoint released as a bare state "
                                                      "dict (GSVA's .bin)")
    p.add_argument("--family", default=None, help="model family override (lisa, read, uground, gsva, glamm); "
                                                  "default: recognised from the checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--conv-template", default=None, choices=[None, "llava_v1", "llava_llama_2"])
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--explain", action="store_true", help="ask an explanatory checkpoint to explain its answer")
    p.add_argument("--load-in-8bit", action="store_true")
    p.add_argument("--load-in-4bit", action="store_true")
    p.add_argument("--out", default="lisa_output", help="output folder")
    p.add_argument("image")
    p.add_argument("instruction")
    return p.parse_args(argv)


def read_rgb(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_outputs(out: Path, stem: str, image: np.ndarray, result, extra: dict) -> dict:
    """Write overlay, per-mask PNGs (0/255) and result JSON into `out`; return the JSON content."""
    out.mkdir(parents=True, exist_ok=True)
    overlay = draw_overlay(image, result.masks, result.text, labels=result.labels)
    cv2.imwrite(str(out / f"{stem}_overlay.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    for i, mask in enumerate(result.masks):
        cv2.imwrite(str(out / f"{stem}_mask_{i}.png"), mask.astype(np.uint8) * 255)
    summary = {"text": result.text, "output_ids": result.output_ids, "input_ids": result.input_ids,
               "num_masks": int(len(result.masks)), "mask_areas": [int(m.sum()) for m in result.masks],
               "mask_labels": result.labels, "rejected": result.rejected, "family": result.family,
               "image_hw": list(image.shape[:2]), "timings_s": result.timings, **extra}
    (out / f"{stem}_result.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        image = read_rgb(args.image)
        t0 = time.perf_counter()
        seg = LisaSegmenter.from_pretrained(args.model, vision_tower=args.vision_tower, device=args.device,
                                            dtype=args.dtype, conv_template=args.conv_template,
                                            load_in_8bit=args.load_in_8bit, load_in_4bit=args.load_in_4bit,
                                            family=args.family, base_model=args.base_model)
        load_s = time.perf_counter() - t0
        result = seg.segment(image, args.instruction, max_new_tokens=args.max_new_tokens, explain=args.explain)
    except (CheckpointError, ValueError, RuntimeError, OSError) as e:
        print(f"lisa-segment: error: {e}", file=sys.stderr)
        return 2
    if args.model == TINY_RANDOM:
        print("note: tiny-random has random weights - its text and masks are meaningless (a wiring demo)")
    summary = write_outputs(Path(args.out), Path(args.image).stem, image, result,
                            {"model": args.model, "instruction": args.instruction, "load_s": load_s})
    print(f"answer: {result.text}")
    print(f"masks: {summary['num_masks']} {summary['mask_areas']} -> {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
