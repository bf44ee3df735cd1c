"""Per-stage inference times of LisaSegmenter on random-weight models (tiny and mid-size), printed as a table.

    .venv/bin/python bench/bench_inference.py [--threads 2] [--tokens 32] [--configs tiny,mid]

Stages: preprocess, CLIP, SAM encoder, prefill, per-token decode, mask decode, post-process; first question vs a
second question on the same image (cached CLIP/SAM features); KV-cached vs full-recompute generation (the
reference's way). Random weights rarely emit eos, so every run generates exactly --tokens tokens.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lisa_model.tiny import build_tiny_segmenter, mid_config, tiny_config  # noqa: E402

STAGES = ["preprocess", "clip", "sam_encoder", "prefill", "decode_per_token", "mask_decode", "postprocess"]


def run(seg, image, instruction, tokens, use_cache=True):
    t0 = time.perf_counter()
    r = seg.segment(image, instruction, max_new_tokens=tokens, use_cache=use_cache)
    return r, time.perf_counter() - t0


def bench(name: str, config_fn, tokens: int, repeats: int) -> list[str]:
    t0 = time.perf_counter()
    seg = build_tiny_segmenter(config_fn=config_fn)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in seg.model.parameters()) / 1e6
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    firsts, seconds, fulls, stage_rows = [], [], [], []
    for i in range(repeats):
        seg.clear_image_cache()  # force a new image
        r1, first = run(seg, image, f"where would I put the clothes {i}", tokens)
        r2, second = run(seg, image, f"the food with most vitamin C {i}", tokens)
        _, full = run(seg, image, f"where would I put the clothes {i}", tokens, use_cache=False)
        firsts.append(first)
        seconds.append(second)
        fulls.append(full)
        stage_rows.append(r1.timings)
    med = statistics.median
    cached_gen = med([t["prefill"] + t["decode_total"] for t in stage_rows])
    full_gen = med(fulls) - med(seconds) + cached_gen  # same image features; the difference is generation
    lines = [f"## {name}: {n_params:.1f} M parameters, built in {build_s:.1f} s, {tokens} new tokens, "
             f"median of {repeats}", "| stage | seconds |", "|---|---|"]
    for s in STAGES:
        lines.append(f"| {s} | {med([t.get(s, 0.0) for t in stage_rows]):.4f} |")
    lines += [f"| first question (total) | {med(firsts):.3f} |",
              f"| second question, same image (total) | {med(seconds):.3f} |",
              f"| second / first | {med(seconds) / med(firsts):.2f} |",
              f"| generation, KV cache | {cached_gen:.3f} |",
              f"| generation, full recompute (reference) | {full_gen:.3f} |",
              f"| full recompute / KV cache | {full_gen / cached_gen:.1f}x |", ""]
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--configs", default="tiny,mid")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    configs = {"tiny": tiny_config, "mid (LLaMA 1024x8, SAM ViT-B, CLIP 256x4)": mid_config}
    chosen = [k for k in configs if k.split(" ")[0] in args.configs.split(",")]
    print(f"torch {torch.__version__}, {args.threads} threads, float32, CPU")
    for name in chosen:
        print("\n".join(bench(name, configs[name], args.tokens, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
