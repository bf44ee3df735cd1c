"""Training step time, samples/s and peak memory of lisa-train's Trainer, tiny and mid-size random models,
with and without gradient checkpointing. Each configuration runs in a fresh process (clean peak memory).

    .venv/bin/python bench/bench_training.py [--threads 2] [--steps 4] [--configs tiny,mid]

Reference recipe (LoRA on q/v + lm_head, embed_tokens, mask decoder, [SEG] head), float32 on this CPU, synthetic
ReasonSeg-format data at 128 px (SAM still encodes a 1024 px padded input, as for real images).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "tiny": {},
    "mid": {"hidden": 1024, "layers": 8, "heads": 16, "intermediate": 2752, "clip_hidden": 256, "clip_layers": 4,
            "clip_heads": 4, "sam": {"embed_dim": 768, "depth": 12, "num_heads": 12,
                                     "global_attn_indexes": [2, 5, 8, 11]}},
}


def one_run(name: str, checkpointing: bool, steps: int, batch: int, data: str, threads: int) -> dict:
    """Runs in the child process: build a Trainer, time `steps` optimiser steps after one warm-up step."""
    import torch

    sys.path.insert(0, str(ROOT))
    from training.config import TrainConfig
    from training.train import Trainer

    torch.set_num_threads(threads)
    cfg = TrainConfig(model="tiny-random", tiny_config=CONFIGS[name], dataset="synthetic", data_root=data,
                      dtype="float32", gradient_checkpointing=checkpointing, batch_size=batch,
                      grad_accumulation_steps=1, warmup_steps=1, epochs=1, steps_per_epoch=10**6,  # no eval / save
                      output_dir=tempfile.mkdtemp(), eval_every=10**9, save_every=10**9)
    trainer = Trainer(cfg)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainer.train(max_steps=1)  # warm-up
    t0 = time.perf_counter()
    trainer.train(max_steps=steps + 1)
    dt = (time.perf_counter() - t0) / steps
    params = sum(p.numel() for p in trainer.model.parameters())
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"config": name, "checkpointing": checkpointing, "params_M": params / 1e6,
            "trainable_M": trainable / 1e6, "step_s": dt, "samples_per_s": batch / dt,
            "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_build_MiB": base_rss}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--configs", default="tiny,mid")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(one_run(**json.loads(a.child))))
        return
    data = tempfile.mkdtemp(prefix="lisa_bench_train_")
    subprocess.run([sys.executable, "-m", "training.synthetic", data, "--train", "64", "--val", "4", "--size", "128"],
                   cwd=ROOT, check=True)
    print(f"{os.cpu_count()} CPUs, {a.threads} threads, float32, batch {a.batch}, load average "
          f"{os.getloadavg()[0]:.1f} at start")
    print("| config | grad. checkpointing | params M | trainable M | step s | samples/s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for name in a.configs.split(","):
        steps = a.steps if name == "tiny" else max(2, a.steps // 2)
        for ckpt in (True, False):
            job = json.dumps({"name": name, "checkpointing": ckpt, "steps": steps, "batch": a.batch, "data": data,
                              "threads": a.threads})
            out = subprocess.run([sys.executable, __file__, "--child", job], cwd=ROOT, capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            print(f"| {name} | {'on' if ckpt else 'off'} | {r['params_M']:.1f} | {r['trainable_M']:.1f} | "
                  f"{r['step_s']:.2f} | {r['samples_per_s']:.2f} | {r['peak_rss_MiB']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
