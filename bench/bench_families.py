"""Per model family on the same mid-size random config: first question, follow-up on the same image, what the family
adds over LISA (similarity maps, point selection, mask prompts), and memory.

    .venv/bin/python bench/bench_families.py [--threads 2] [--tokens 16] [--repeats 3] [--families lisa,read,...]

Mid config: LLaMA 1024 x 8 layers, SAM ViT-B geometry, CLIP 256 wide x 4 layers at 336 px (576 image tokens, as
every LLaVA-1.5 family has). Random weights emit no [SEG] on their own: the [SEG] row of lm_head is pushed along the
mean final state of a prompt so that every generated token is [SEG], and one mask is decoded per answer
(max_masks=1), as a typical answer holds one. Each family runs in its own process (peak resident memory is per
process); the model is built once per family.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lisa_model.configuration_lisa import PROJECTOR_MLP2X_GELU  # noqa: E402
from lisa_model.families import FAMILIES, ImageGeometry  # noqa: E402
from lisa_model.tiny import MID_SAM, build_tiny_segmenter, tiny_config  # noqa: E402


def mid_336(vocab_size: int, seg_token_id: int):
    return tiny_config(vocab_size, seg_token_id, hidden=1024, layers=8, heads=16, intermediate=2752,
                       clip_hidden=256, clip_layers=4, clip_heads=4, sam=MID_SAM,
                       projector_type=PROJECTOR_MLP2X_GELU, clip_image_size=336, clip_patch_size=14)


def final_states(seg, image: np.ndarray, input_ids: list[int]) -> torch.Tensor:
    """(L, hidden) last-layer states of the language model for `input_ids` on `image`."""
    model, feats = seg.model, seg.set_image(image)
    ids = torch.tensor([input_ids])
    with torch.no_grad():
        return model.forced_states(ids, feats.clip_tokens, feats.token_mask)[0]


def always_seg(seg, image: np.ndarray) -> None:
    """Make the random model answer [SEG] at every step: its lm_head row gains the mean final state's direction,
    scaled to three times the typical top logit (twice was already enough on this config)."""
    states = final_states(seg, image, seg.segment(image, "warm up", max_new_tokens=1).input_ids)
    head = seg.model.get_output_embeddings().weight
    top = (states @ head.T).max(-1).values.mean()
    direction = states.mean(0)
    with torch.no_grad():
        head[seg.model.config.seg_token_id] += 3.0 * top * direction / direction.norm() ** 2


def measure(family: str, tokens: int, repeats: int) -> dict:
    seg = build_tiny_segmenter(config_fn=mid_336, family=family)
    model = seg.model
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    firsts, follow_ups, added, masks = [], [], [], []
    seg.warm_up()  # the first forward of a process pays for lazy initialisation: not the family's cost
    always_seg(seg, image)
    for i in range(repeats):
        seg.clear_image_cache()
        t0 = time.perf_counter()
        first = seg.segment(image, f"where would I put the clothes {i}", max_new_tokens=tokens, max_masks=1)
        firsts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        seg.segment(image, f"the food with most vitamin C {i}", max_new_tokens=tokens, max_masks=1)
        follow_ups.append(time.perf_counter() - t0)
        masks.append(len(first.masks) + len(first.rejected))
        # what the family adds: its prompts for 4 [SEG] states, on this image's real token states
        feats = seg.set_image(image)
        ids = torch.tensor([first.input_ids])
        with torch.no_grad():
            states = final_states(seg, image, first.input_ids)
            seg_states = states[-4:]
            image_states = model.image_token_states(states, ids[0])
            geometry = ImageGeometry(feats.original_size, feats.input_size, model.sam.image_encoder.img_size,
                                     feats.clip_valid_size)
            t0 = time.perf_counter()
            model.family.mask_prompts(model, seg_states, model.seg_projection(seg_states), image_states, geometry)
            added.append((time.perf_counter() - t0) / 4)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    med = statistics.median
    return {"family": family, "first_s": med(firsts), "follow_up_s": med(follow_ups), "added_per_mask_ms":
            med(added) * 1e3, "masks": med(masks), "params_mib": params / 2**20,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--families", default=",".join(reversed(list(FAMILIES))))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one family in this process, print JSON
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one, args.tokens, args.repeats)))
        return
    print(f"## families on the mid-size random config (LLaMA 1024x8, SAM ViT-B, CLIP 256x4 at 336 px), "
          f"{args.tokens} new tokens, {args.threads} threads, median of {args.repeats}")
    print("| family | first question (s) | follow-up, same image (s) | family's prompts per mask (ms) | masks per "
          "answer | parameters (MiB) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for family in args.families.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", family, "--threads", str(args.threads),
                              "--tokens", str(args.tokens), "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {family} | {r['first_s']:.2f} | {r['follow_up_s']:.2f} | {r['added_per_mask_ms']:.2f} | "
              f"{r['masks']:.0f} | {r['params_mib']:.0f} | {r['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
