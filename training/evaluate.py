"""`lisa-eval`: gIoU / cIoU on ReasonSeg-format splits (and referring splits), two protocols.

    lisa-eval --model CKPT --data data/reason_seg/val [--protocol teacher_forced|generation|both] --out report/

* teacher_forced: the reference's validation - the prompt "{query} Please output segmentation mask." (sentence)
  or "What is {query} in this image? Please output segmentation mask." (phrase) with the answer "[SEG]." given,
  so every sample gets exactly one mask.
* generation: what a robot does - the model answers freely; its first [SEG] mask is the prediction (an answer
  without [SEG] predicts nothing, which scores 0 on a non-empty target).

Writes report.json, report.md and overlays of the best and worst cases.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import torch
from tqdm import tqdm

from lisa_model import LisaSegmenter
from lisa_model.conversation import build_conversation, wrap_image_token
from lisa_model.metrics import intersection_union, segmentation_scores
from lisa_model.visualization import draw_overlay

PROTOCOLS = ("teacher_forced", "generation")


@dataclass
class EvalItem:
    """One evaluation query: image (HxWx3 uint8 RGB), query text, sentence or phrase, gt (uint8 HxW 0/1/255)."""

    name: str
    image: np.ndarray
    query: str
    is_sentence: bool
    gt: np.ndarray


def eval_question(query: str, is_sentence: bool) -> str:
    """The reference's evaluation prompt for a ReasonSeg query."""
    if is_sentence:
        return f"{query} Please output segmentation mask."
    return f"What is {query} in this image? Please output segmentation mask."


@torch.no_grad()
def teacher_forced_logits(seg: LisaSegmenter, image: np.ndarray, turns: list[tuple[str, str]]
                          ) -> tuple[list[int], torch.Tensor]:
    """The reference's referring evaluation: one forward over a given conversation (no generation).

    turns: (question, answer) pairs, the first question starting with "<image>\\n" (rephrased the way the model
    family asks). Returns the conversation's input ids and float32 [n, H, W] mask logits, one per [SEG] of the
    answers, from the state before each."""
    model, cfg = seg.model, seg.model.config
    feats = seg.set_image(image)
    turns = [(model.family.first_question(turns[0][0]), turns[0][1]), *turns[1:]]
    text = wrap_image_token(build_conversation(turns, cfg.conv_template), cfg.mm_use_im_start_end)
    ids, _ = seg.tokenizer.tokenize_conversation(text, cfg.conv_template)
    ids_t = torch.tensor([ids], device=seg.device)
    states = model.forced_states(ids_t, feats.clip_tokens, feats.token_mask)[0]
    positions = model.seg_state_positions(ids_t)[0]
    logits = model.masks_from_states(states[positions], feats.sam_embedding, feats.input_size, feats.original_size,
                                     model.image_token_states(states, ids_t[0]), feats.clip_valid_size)
    return ids, logits


def predict_teacher_forced(seg: LisaSegmenter, item: EvalItem) -> np.ndarray:
    """bool HxW: the mask of the given answer "[SEG]." (no generation)."""
    question = "<image>\n" + eval_question(item.query, item.is_sentence)
    _, logits = teacher_forced_logits(seg, item.image, [(question, "[SEG].")])
    return (logits[0] > 0).cpu().numpy()


def predict_generation(seg: LisaSegmenter, item: EvalItem, max_new_tokens: int = 32) -> np.ndarray:
    r = seg.segment(item.image, eval_question(item.query, item.is_sentence), max_new_tokens=max_new_tokens)
    return r.masks[0] if len(r.masks) else np.zeros(item.gt.shape, bool)


def evaluate_samples(seg: LisaSegmenter, items: Iterable[EvalItem], protocol: str = "teacher_forced",
                     keep_predictions: bool = False, progress: bool = False) -> dict:
    """gIoU / cIoU (overall, and short/long split by is_sentence) of `items` under `protocol`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}")
    predict = predict_teacher_forced if protocol == "teacher_forced" else predict_generation
    preds, gts, kinds, per_item = [], [], [], []
    for item in tqdm(list(items), desc=f"eval {protocol}", disable=not progress):
        pred = predict(seg, item)
        i, u = intersection_union(pred, item.gt)
        preds.append(pred)
        gts.append(item.gt)
        kinds.append("long" if item.is_sentence else "short")
        per_item.append({"name": item.name, "query": item.query, "iou": float(i / u) if u else 1.0,
                         **({"pred": pred, "item": item} if keep_predictions else {})})
    scores: dict = {"n": len(preds), **(segmentation_scores(preds, gts) if preds else {"giou": 0.0, "ciou": 0.0})}
    for kind in ("short", "long"):
        idx = [k for k, v in enumerate(kinds) if v == kind]
        if idx:
            s = segmentation_scores([preds[k] for k in idx], [gts[k] for k in idx])
            scores[kind] = {"n": len(idx), **s}
    scores["per_item"] = per_item
    return scores


def write_report(out: Path, results: dict[str, dict], meta: dict, n_show: int = 4) -> None:
    """report.json, report.md and best/worst overlays per protocol."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {p: {k: v for k, v in r.items() if k != "per_item"} for p, r in results.items()}
    (out / "report.json").write_text(json.dumps({"meta": meta, "scores": summary,
                                                 "per_item": {p: [{k: v for k, v in x.items()
                                                                   if k not in ("pred", "item")}
                                                                  for x in r["per_item"]]
                                                              for p, r in results.items()}}, indent=2))
    lines = [f"# lisa-eval: {meta.get('model')} on {meta.get('data')}", "",
             "| protocol | split | n | gIoU | cIoU |", "|---|---|---|---|---|"]
    for p, r in summary.items():
        lines.append(f"| {p} | overall | {r['n']} | {r['giou']:.4f} | {r['ciou']:.4f} |")
        for kind in ("short", "long"):
            if kind in r:
                lines.append(f"| {p} | {kind} | {r[kind]['n']} | {r[kind]['giou']:.4f} | {r[kind]['ciou']:.4f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    for p, r in results.items():
        ranked = sorted((x for x in r["per_item"] if "pred" in x), key=lambda x: x["iou"])
        for tag, chosen in (("worst", ranked[:n_show]), ("best", ranked[::-1][:n_show])):
            for rank, x in enumerate(chosen):
                item = x["item"]
                gt = item.gt == 1
                both = np.stack([x["pred"], gt & ~x["pred"]]) if len(x["pred"]) else gt[None]
                caption = f"{item.query} | IoU {x['iou']:.2f} (colour 0 = prediction, 1 = missed target)"
                img = draw_overlay(item.image, both, caption)
                cv2.imwrite(str(out / f"{p}_{tag}_{rank}_{item.name}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def load_items(data: str | Path, limit: int | None = None) -> list[EvalItem]:
    """ReasonSeg-format split (one JSON per image) or a referring split, as evaluation items (text[0] only)."""
    from .data.reason_seg import read_reason_seg_split

    return [EvalItem(s.name, s.image, s.query, s.is_sentence, s.gt) for s in read_reason_seg_split(data, limit)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lisa-eval", description="gIoU / cIoU of a checkpoint of any model family.")
    p.add_argument("--model", required=True)
    p.add_argument("--vision-tower")
    p.add_argument("--family", help="model family override (lisa, read, uground, gsva, glamm); default: recognised "
                                    "from the checkpoint")
    p.add_argument("--base-model", help="base model folder of a bare state-dict release (GSVA)")
    p.add_argument("--data", required=True, help="ReasonSeg-format split folder")
    p.add_argument("--protocol", default="both", choices=[*PROTOCOLS, "both"])
    p.add_argument("--limit", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", default="eval_report")
    a = p.parse_args(argv)
    seg = LisaSegmenter.from_pretrained(a.model, vision_tower=a.vision_tower, device=a.device, dtype=a.dtype,
                                        family=a.family, base_model=a.base_model)
    items = load_items(a.data, a.limit)
    protocols = PROTOCOLS if a.protocol == "both" else (a.protocol,)
    results = {pr: evaluate_samples(seg, items, pr, keep_predictions=True, progress=True) for pr in protocols}
    write_report(Path(a.out), results, {"model": a.model, "family": seg.model.family.name, "data": str(a.data),
                                        "n": len(items)})
    print((Path(a.out) / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
