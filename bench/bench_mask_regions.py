"""How the node's region rule was chosen: lisa-demo's 3D centroids within 3 cm for each mask_min_peak_ratio.

    .venv/bin/python bench/bench_mask_regions.py [--model lisa-demo] [--rooms 30] [--first-seed 5000]

Rooms of their own (seeds 5000-5029 by default), not bench_demo_model's held-out ones (1000-1019), so the ratio
is not fitted to the rooms its scores are reported on. Every visible object is asked about with a training and a
held-out phrasing; the support-plane rule is on (the node's default) throughout. Prints, per ratio, the mean mask
IoU and the share of centroids within 3 cm, overall and by kind.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent)]
from bench_demo_model import NODE, cases_3d, mask_and_error  # noqa: E402

from lisa_model import LisaSegmenter  # noqa: E402
from training.household import KIND_NAMES  # noqa: E402

RATIOS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lisa-demo")
    p.add_argument("--rooms", type=int, default=30)
    p.add_argument("--first-seed", type=int, default=5000)
    p.add_argument("--workdir", default="/tmp/lisa_mask_regions_bench")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    seg = LisaSegmenter.from_pretrained(args.model)
    kinds, ious, errors = [], {r: [] for r in RATIOS}, {r: [] for r in RATIOS}
    for held_out in (False, True):
        for case in cases_3d(seg, Path(args.workdir), args.rooms, args.first_seed, held_out):
            kinds.append(case.kind)
            for ratio in RATIOS:
                mask, error = mask_and_error(case, ratio, NODE.support_plane_margin)
                ious[ratio].append((mask & case.instance).sum() / max((mask | case.instance).sum(), 1))
                errors[ratio].append(error)
    kinds = np.asarray(kinds)
    print(f"{args.model}: {args.rooms} rooms (seeds {args.first_seed}-{args.first_seed + args.rooms - 1}), "
          f"{len(kinds)} questions; node default {NODE.mask_min_peak_ratio}\n")
    present = [k for k in KIND_NAMES if (kinds == k).any()]
    print("| ratio | mean IoU | within 3 cm | " + " | ".join(present) + " |")
    print("|---" * (3 + len(present)) + "|")
    for ratio in RATIOS:
        e = np.asarray(errors[ratio])
        print(f"| {ratio:.1f} | {np.mean(ious[ratio]):.3f} | {np.mean(e <= 0.03):.3f} | "
              + " | ".join(f"{np.mean(e[kinds == k] <= 0.03):.2f}" for k in present) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
