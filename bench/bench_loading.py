"""Peak memory of loading a released-layout LISA checkpoint: does streaming keep it near the final model size?

    .venv/bin/python bench/bench_loading.py [--shard-mb 100] [--dtypes bfloat16,float32] [--workdir DIR]

Builds the mid-size random model (`lisa_model.tiny.mid_config`: LLaMA 1024x8, SAM ViT-B, a small CLIP) once,
exports it in the released layout as bfloat16 shards (`export_released`) with its CLIP beside it
(`export_vision_tower`, float32), then loads it with `LisaSegmenter.from_pretrained` in a FRESH subprocess per
dtype and reads /proc/self/status:
- baseline: VmRSS after the imports (torch, transformers, lisa_model), before loading;
- peak: VmHWM during loading (reset to the baseline with /proc/self/clear_refs before loading starts);
- after load: VmRSS, split into RssAnon (heap: tensors we allocated) and RssFile (pages mapped from the shards);
- after touch: VmRSS once every parameter has been read (a tensor kept memory-mapped from its shard only
  becomes resident when it is read).
"model" is the loaded model's parameter + buffer bytes. "peak - base" / model near 1.0 means no second copy.

What it shows (mid model, bf16 shards of 100 MB): a float32 load peaks at the model plus ONE shard (the bf16 pages
of the shard being converted), no second copy. A bfloat16 load of bfloat16 shards copies nothing at all: the
parameters ARE the memory-mapped shard data (torch.load(mmap=True) / safetensors, and `.to(same dtype)` is a
no-op), so RSS grows only as the weights are first read (the "after touch" column), as clean file-backed pages.
The flip side: a process that truncates those files in place (e.g. `torch.save` over the same path) kills the
process that loaded them with SIGBUS; `export_released` therefore unlinks old files before writing new ones.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


def status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(folder: str, dtype: str) -> None:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from lisa_model import LisaSegmenter

    base = status()
    peak_reset = reset_peak()
    t0 = time.perf_counter()
    seg = LisaSegmenter.from_pretrained(folder, dtype=dtype)
    load_s = time.perf_counter() - t0
    after = status()
    model = seg.model
    tensors = list(model.parameters()) + list(model.buffers())
    model_bytes = sum(t.numel() * t.element_size() for t in tensors)
    with torch.no_grad():
        for t in tensors:  # make every page resident
            t.sum()
    touched = status()
    print(json.dumps({"dtype": dtype, "base": base["VmRSS"], "peak": after["VmHWM"], "peak_reset": peak_reset,
                      "after": after["VmRSS"], "anon": after["RssAnon"], "file": after["RssFile"],
                      "touched": touched["VmRSS"], "touched_anon": touched["RssAnon"],
                      "touched_file": touched["RssFile"], "touched_peak": touched["VmHWM"], "model": model_bytes,
                      "load_s": load_s}))


def build(folder: Path, shard_mb: int) -> tuple[int, int, float]:
    """Export the mid model; returns (LISA weight bytes on disk, CLIP bytes on disk, seconds)."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from lisa_model.export import export_released, export_vision_tower
    from lisa_model.tiny import build_tiny_segmenter, mid_config

    t0 = time.perf_counter()
    seg = build_tiny_segmenter(config_fn=mid_config)
    clip = export_vision_tower(seg, folder / "clip")
    export_released(seg, None, folder / "lisa-mid", dtype=torch.bfloat16, max_shard_bytes=shard_mb * 10**6,
                    vision_tower=clip)
    weights = sum(p.stat().st_size for p in (folder / "lisa-mid").glob("pytorch_model*.bin"))
    clip_bytes = (clip / "model.safetensors").stat().st_size
    return weights, clip_bytes, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shard-mb", type=int, default=100, help="shard limit in MB (10**6 bytes)")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--workdir", help="keep the exported checkpoint here (default: a temporary folder)")
    p.add_argument("--child", nargs=2, metavar=("FOLDER", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return
    folder = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lisa_bench_loading."))
    try:
        if (folder / "lisa-mid" / "config.json").is_file():
            ckpt = sum(p.stat().st_size for p in (folder / "lisa-mid").glob("pytorch_model*.bin"))
            clip_bytes = (folder / "clip" / "model.safetensors").stat().st_size
            print(f"reusing {folder / 'lisa-mid'}")
        else:
            # export in a subprocess too, so that this process never holds the model
            out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                                  f"from bench.bench_loading import build; from pathlib import Path; "
                                  f"print(*build(Path({str(folder)!r}), {args.shard_mb}))"],
                                 check=True, capture_output=True, text=True, cwd=ROOT)
            ckpt, clip_bytes, build_s = out.stdout.split()[-3:]
            ckpt, clip_bytes = int(ckpt), int(clip_bytes)
            print(f"built and exported the mid model in {float(build_s):.1f} s")
        shards = sorted(p.name for p in (folder / "lisa-mid").glob("pytorch_model-*.bin"))
        print(f"checkpoint: {folder / 'lisa-mid'}: {len(shards)} bf16 shards, {ckpt / MB:.1f} MiB "
              f"(+ CLIP float32 {clip_bytes / MB:.1f} MiB in {folder / 'clip'})")
        rows = []
        for dtype in args.dtypes.split(","):
            out = subprocess.run([sys.executable, __file__, "--child", str(folder / "lisa-mid"), dtype],
                                 check=True, capture_output=True, text=True, cwd=ROOT)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print("| load dtype | ckpt on disk MiB | model MiB | base RSS MiB | peak RSS MiB | peak - base MiB | "
              "(peak - base) / model | RSS after MiB (anon + file) | RSS after touch MiB (anon + file) | load s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            delta = r["peak"] - r["base"]
            print(f"| {r['dtype']} | {(ckpt + clip_bytes) / MB:.1f} | {r['model'] / MB:.1f} | {r['base'] / MB:.1f} | "
                  f"{r['peak'] / MB:.1f} | {delta / MB:.1f} | {delta / r['model']:.2f} | "
                  f"{r['after'] / MB:.1f} ({r['anon'] / MB:.1f} + {r['file'] / MB:.1f}) | "
                  f"{r['touched'] / MB:.1f} ({r['touched_anon'] / MB:.1f} + {r['touched_file'] / MB:.1f}) | "
                  f"{r['load_s']:.2f} |")
        if not all(r["peak_reset"] for r in rows):
            print("note: /proc/self/clear_refs was not writable: peak includes the import phase")
    finally:
        if not args.workdir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
