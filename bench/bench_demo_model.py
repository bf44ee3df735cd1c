"""lisa-demo from scratch: generate the household data, train with lisa-train, evaluate on held-out scenes.

    .venv/bin/python bench/bench_demo_model.py [--workdir DIR] [--steps N] [--seed S]       # everything
    .venv/bin/python bench/bench_demo_model.py --model lisa-demo --skip-train                # score the shipped one
    .venv/bin/python bench/bench_demo_model.py --ship                                        # ... and ship it
    .venv/bin/python bench/bench_demo_model.py --set opening_weight=1.0 ...                   # another recipe

Scores, all on scenes never trained on and asked as the node asks (the bare question, generation, first mask):
* gIoU / cIoU with the training phrasings (val) and with held-out phrasings (val_heldout), beside the best
  query-blind baselines (largest object, random object, all objects) on the same frames;
* the share of answers that are exactly "Sure, it is [SEG]."; for things that are absent (val_absent), the share
  answered without a mask; both also by kind (a kind the model never finds hides in a high overall figure);
* gIoU also for the node's masks: the model's, less the detached regions it is unsure of (parameter
  mask_min_peak_ratio, lisa_model.mask_regions);
* 3D: 640 x 480 household scenes with depth; per visible object, the node's mask IoU with the true instance and
  the 3D centroid (the node's `targets_3d` with its default parameters) against the true visible-surface
  centroid: share within 3 cm, overall and by kind, and without the support-plane rule or the region rule; the
  share answered without a mask, apart for objects the language model can hardly see (LISA's CLIP sees the centre
  square of the frame only).
--ship writes the trained weights (float16) to lisa_model/weights/lisa-demo.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lisa_model import LisaSegmenter, SegmentationResult  # noqa: E402
from lisa_model.mask_regions import keep_confident_regions  # noqa: E402
from lisa_model.metrics import segmentation_scores  # noqa: E402
from lisa_ros.parameters import default_settings  # noqa: E402
from training.baselines import baseline_scores  # noqa: E402
from training.data.reason_seg import scan  # noqa: E402
from training.household import IMPLICIT, KIND_NAMES  # noqa: E402

CONFIG = ROOT / "training" / "configs" / "lisa_demo.yaml"
SHIPPED = ROOT / "lisa_model" / "weights" / "lisa-demo"
ANSWER = "Sure, it is [SEG]."
NODE = default_settings()


def first_mask(result, shape, min_peak_ratio: float = 0.0) -> np.ndarray:
    """The first [SEG]'s mask (empty when none): as the model gives it, or with the node's region rule."""
    if not len(result.masks):
        return np.zeros(shape, bool)
    return keep_confident_regions(result.mask_logits[0], min_peak_ratio)


def by_kind(kinds: list[str], hits: list[bool]) -> str:
    """"kind share (n=...)" for every kind asked about, in KIND_NAMES order."""
    kinds, hits = np.asarray(kinds), np.asarray(hits, float)
    return ", ".join(f"{kind} {hits[kinds == kind].mean():.2f} (n={(kinds == kind).sum()})"
                     for kind in KIND_NAMES if (kinds == kind).any())


def split_scores(seg: LisaSegmenter, folder: Path) -> dict:
    preds, node_preds, gts, exact, kinds = [], [], [], [], []
    for rec in scan(folder):
        image, gt = rec.load()
        r = seg.segment(image, rec.queries[0], max_new_tokens=12)
        exact.append(r.text.replace(" [SEG] .", " [SEG].").strip() == ANSWER)
        kinds.append(rec.annotation["kind"])
        preds.append(first_mask(r, gt.shape))
        node_preds.append(first_mask(r, gt.shape, NODE.mask_min_peak_ratio))
        gts.append(gt)
    scores = segmentation_scores(preds, gts)
    return {**scores, "node_giou": segmentation_scores(node_preds, gts)["giou"],
            "answer_template": float(np.mean(exact)), "template_by_kind": by_kind(kinds, exact), "n": len(gts)}


def absent_scores(seg: LisaSegmenter, folder: Path) -> dict:
    records = scan(folder)
    no_mask = [len(seg.segment(rec.load()[0], rec.queries[0], max_new_tokens=12).masks) == 0 for rec in records]
    return {"no_mask": float(np.mean(no_mask)), "by_kind": by_kind([r.annotation["kind"] for r in records], no_mask),
            "n": len(records)}


def language_view(seg: LisaSegmenter, shape: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: the pixels the language model sees. LISA's CLIP input is the frame's centre square (shortest
    edge -> size, centre crop), so at 640x480 the outer 80 px columns reach only SAM; families that pad see all."""
    view = np.ones(shape, bool)
    if seg.model.family.clip_pads_image(seg.model.config):
        return view
    pre = seg.clip_preprocessor
    side = min(shape) * min(pre.crop / pre.size, 1.0)
    y0, x0 = int(round((shape[0] - side) / 2)), int(round((shape[1] - side) / 2))
    view[:] = False
    view[y0:shape[0] - y0, x0:shape[1] - x0] = True
    return view


@dataclass
class Case3D:
    """One visible object of a 640x480 room and the model's answer to a question about it."""

    kind: str
    result: SegmentationResult
    instance: np.ndarray  # bool [H, W], the object's true pixels
    centroid: np.ndarray  # its true visible-surface centroid, colour camera frame (m)
    scene: object  # lisa_ros.scenes.scannet.ScanNetScene


def cases_3d(seg: LisaSegmenter, folder: Path, rooms: int, first_seed: int, held_out: bool) -> Iterator[Case3D]:
    """Rooms with depth written to folder/<k> (seeds first_seed + k); for every object covering >= 1.2 % of the
    frame, the model's answer to one of its kind's questions (held-out phrasings or training ones), asked as the
    node asks."""
    import cv2

    from lisa_ros.scenes.household import generate_scene
    from lisa_ros.scenes.scannet import ScanNetScene

    for k in range(rooms):
        room = generate_scene(folder / f"{k}", num_frames=1, seed=first_seed + k)
        scene, truth = ScanNetScene.open(room), json.loads((room / "ground_truth.json").read_text())
        frame = truth["frames"][0]
        rgb = scene.read_color(0)
        ids = cv2.imread(str(room / frame["instance"]), cv2.IMREAD_UNCHANGED)
        for obj in frame["objects"]:
            if obj["pixel_count"] < 0.012 * ids.size:
                continue
            question = IMPLICIT[obj["kind"]][1 if held_out else 0][k % 2]
            yield Case3D(obj["kind"], seg.segment(rgb, question, max_new_tokens=12), ids == obj["id"],
                         np.asarray(obj["visible_centroid_camera"]), scene)


def mask_and_error(case: Case3D, min_peak_ratio: float, support_margin: float) -> tuple[np.ndarray, float]:
    """The node's mask (with this region rule) and its 3D centroid's distance from the truth (m; inf: none)."""
    from lisa_ros.geometry import targets_3d

    mask = first_mask(case.result, case.instance.shape, min_peak_ratio)
    scene = case.scene
    (target, _), = targets_3d(mask[None], scene.read_depth(0), scene.depth_intrinsics, scene.color_intrinsics,
                              trim_percentile=NODE.outlier_percentile, depth_gap=NODE.depth_gap,
                              support_margin=support_margin)
    return mask, float(np.linalg.norm(target.centroid - case.centroid)) if target.valid else np.inf


def scores_3d(seg: LisaSegmenter, workdir: Path, scenes: int, seed: int, held_out: bool) -> dict:
    """Held-out 640x480 scenes with depth (seeds seed + 1000 + k): IoU with the true instance and 3D centroid error
    per visible object, through the node's mask rule and geometry with their default parameters, and without the
    support-plane rule or the region rule for comparison.
    held_out: ask with held-out phrasings (else with training ones); either way the scenes are new."""
    # name -> (region rule, support-plane margin)
    variants = {"node": (NODE.mask_min_peak_ratio, NODE.support_plane_margin),
                "no_plane": (NODE.mask_min_peak_ratio, 0.0), "no_regions": (0.0, NODE.support_plane_margin)}
    ious, kinds, errors, unanswered, seen = [], [], {name: [] for name in variants}, [], []
    for case in cases_3d(seg, workdir / "scenes3d", scenes, seed + 1000, held_out):
        kinds.append(case.kind)
        # at least a quarter of the object where the language model, which says "Sure" or "Sorry", can see it
        seen.append((case.instance & language_view(seg, case.instance.shape)).sum() >= 0.25 * case.instance.sum())
        unanswered.append(len(case.result.masks) == 0)  # "not here" to a visible object
        for name, (ratio, margin) in variants.items():
            mask, error = mask_and_error(case, ratio, margin)
            errors[name].append(error)
            if name == "node":
                ious.append((mask & case.instance).sum() / max((mask | case.instance).sum(), 1))
    node_errors, kinds, seen, unanswered = (np.asarray(errors["node"]), np.asarray(kinds), np.asarray(seen),
                                            np.asarray(unanswered))
    return {"seen": int(seen.sum()), "unanswered_seen": float(unanswered[seen].mean()) if seen.any() else 0.0,
            "unanswered_unseen": float(unanswered[~seen].mean()) if (~seen).any() else 0.0,
            "within_3cm_seen": float((node_errors[seen] <= 0.03).mean()) if seen.any() else 0.0,"cases": len(node_errors), "mean_iou": float(np.mean(ious)), "unanswered": by_kind(kinds, unanswered),
            "unanswered_share": float(unanswered.mean()),
            "within_3cm": float((node_errors <= 0.03).mean()), "median_error_cm": float(np.median(node_errors) * 100),
            "within_3cm_no_plane": float((np.asarray(errors["no_plane"]) <= 0.03).mean()),
            "within_3cm_no_regions": float((np.asarray(errors["no_regions"]) <= 0.03).mean()),
            "by_kind": {kind: (int((kinds == kind).sum()), float((node_errors[kinds == kind] <= 0.03).mean()))
                        for kind in KIND_NAMES if (kinds == kind).any()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/lisa_demo_bench")
    p.add_argument("--model", default=None, help="score this checkpoint instead of the run's export")
    p.add_argument("--skip-data", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--scenes-3d", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ship", action="store_true", help="write the trained model to lisa_model/weights/lisa-demo")
    p.add_argument("--uniform-kinds", action="store_true", help="the data's question kinds drawn uniformly, as "
                   "for the lisa-demo shipped before 2026-12-06 (default: by visibility, training.household)")
    p.add_argument("--set", nargs="*", default=[], help="training config overrides key=value (lisa-train --set)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work, t0 = Path(args.workdir), time.time()
    data, run = work / "data", work / "run"
    if not args.skip_data and not (data / "val_absent").is_dir():
        subprocess.run([sys.executable, "-m", "training.household", str(data), "--train", str(args.train_size),
                        "--seed", str(args.seed), *([] if args.uniform_kinds else ["--balanced-kinds"])],
                       check=True, cwd=ROOT)
    if not args.skip_train:
        sets = [f"data_root={json.dumps(str(data))}", f"output_dir={json.dumps(str(run))}", f"seed={args.seed}"]
        if args.steps:
            sets.append(f"steps_per_epoch={args.steps}")
        sets += args.set
        subprocess.run([sys.executable, "-m", "training.train", "--config", str(CONFIG), "--set", *sets],
                       check=True, cwd=ROOT)
    model = args.model or str(run / "export" / "ours")
    seg = LisaSegmenter.from_pretrained(model)
    if args.ship:
        seg.model.half()
        seg.save_pretrained(SHIPPED)
        seg = LisaSegmenter.from_pretrained("lisa-demo")  # score what ships (float16-rounded weights)
    print(f"model {model}: {sum(p.numel() for p in seg.model.parameters()) / 1e6:.2f} M parameters; "
          f"{time.time() - t0:.0f} s to here\n")
    print("| split | n | gIoU | cIoU | gIoU, node's masks | 'Sure, it is [SEG].' | best blind baseline gIoU |",
          "|---|---|---|---|---|---|---|", sep="\n")
    template_by_kind = {}
    for split in ("val", "val_heldout"):
        s = split_scores(seg, data / split)
        template_by_kind[split] = s["template_by_kind"]
        blind = baseline_scores(data / split)
        others = ", ".join(f"{k} {blind[k]['giou']:.3f}" for k in ("largest_object", "random_object_expected",
                                                                   "all_objects"))
        print(f"| {split} | {s['n']} | {s['giou']:.4f} | {s['ciou']:.4f} | {s['node_giou']:.4f} | "
              f"{s['answer_template']:.2f} | "
              f"{blind['best']['giou']:.4f} ({others}) |")
    for split, line in template_by_kind.items():
        print(f"  {split}, 'Sure, it is [SEG].' by kind: {line}")
    a = absent_scores(seg, data / "val_absent")
    print(f"\nabsent things (val_absent, n={a['n']}): answered without a mask {a['no_mask']:.2f}\n"
          f"  by kind: {a['by_kind']}")
    for held_out in (False, True):
        d = scores_3d(seg, work, args.scenes_3d, args.seed, held_out)
        print(f"3D, {args.scenes_3d} held-out 640x480 scenes, {d['cases']} objects, "
              f"{'held-out' if held_out else 'training'} phrasings: mean mask IoU {d['mean_iou']:.3f}, centroid "
              f"within 3 cm {d['within_3cm']:.2f} (without the support-plane rule {d['within_3cm_no_plane']:.2f}, "
              f"without the region rule {d['within_3cm_no_regions']:.2f}), median error {d['median_error_cm']:.2f} cm")
        print("  within 3 cm by kind: " + ", ".join(f"{kind} {share:.2f} (n={n})" for kind, (n, share) in
                                                    d["by_kind"].items()))
        print(f"  answered without a mask (the object is in view) {d['unanswered_share']:.2f}, by kind: "
              f"{d['unanswered']}")
        print(f"  objects at least a quarter inside the language model's view ({d['seen']} of {d['cases']}): "
              f"answered without a mask {d['unanswered_seen']:.2f}, within 3 cm {d['within_3cm_seen']:.2f}; the "
              f"others answered without a mask {d['unanswered_unseen']:.2f}")
    print(f"\nkinds: {KIND_NAMES}; total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
