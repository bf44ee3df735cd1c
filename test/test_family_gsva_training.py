"""Training a GSVA model: gRefCOCO-style data with [REJ] answers, and `lisa-train`'s Trainer on a tiny random GSVA.

The GSVA fixture's tiny gRefCOCO set (test/fixtures/gsva_tiny_reference/grefcoco_tiny) is the data; its training
case (`train_case/`) pins the conversations and target masks the reference built from it.
"""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import read_rgb
from lisa_model.conversation import build_conversation, wrap_image_token
from training.config import TrainConfig
from training.data.grefcoco import GRefCocoDataset, multi_target_turn
from training.lora import unwrap
from training.train import Trainer

GSVA = Path(__file__).resolve().parent / "fixtures" / "gsva_tiny_reference"
TRAIN = GSVA / "train_case"
TINY = dict(hidden=64, layers=2, clip_image_size=64, clip_patch_size=8,
            sam={"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": [1], "image_size": 64,
                 "patch_size": 4, "window_size": 8})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """data_root/refer_seg/grefcoco + the COCO image folder, holding the fixture's two training images."""
    root = tmp_path_factory.mktemp("gsva_data")
    refer = root / "refer_seg"
    shutil.copytree(GSVA / "grefcoco_tiny", refer / "grefcoco")
    images = refer / "images" / "mscoco" / "images" / "train2014"
    images.mkdir(parents=True)
    for i, image_id in enumerate((201, 202)):
        rgb = read_rgb(TRAIN / f"image_{i}.png")
        cv2.imwrite(str(images / f"COCO_train2014_{image_id:012d}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return root


def test_grefcoco_reader_builds_the_reference_conversations(data_root):
    exp = json.loads((TRAIN / "expected.json").read_text())
    ds = GRefCocoDataset(data_root / "refer_seg" / "grefcoco", data_root / "refer_seg" / "images" / "mscoco"
                         / "images" / "train2014")
    assert ds.image_ids == [201, 202]
    # (image, expressions in the reference's sampled order, question template, answer template)
    picks = [(201, ["gray bar", "the cat", "white circle"], 3, 0), (202, ["the pink blob", "the bicycle"], 2, 3)]
    for i, (image_id, names, question, answer) in enumerate(picks):
        refs = {s["sent"]: ref["ann_id"] for ref in ds.refs[image_id] for s in ref["sentences"]}
        masks = [ds.target_mask(refs[n], ds.images[image_id]) for n in names]
        for k, m in enumerate(masks):
            np.testing.assert_array_equal(m > 0, np.asarray(Image.open(TRAIN / f"gt_mask_{i}_{k}.png")) > 0)
        turn = multi_target_turn(names, [bool(m.any()) for m in masks], question, answer)
        assert wrap_image_token(build_conversation([turn], "llava_v1")) == exp["conversations"][i]


def test_grefcoco_samples_pair_slots_with_targets(data_root):
    import random

    ds = GRefCocoDataset(data_root / "refer_seg" / "grefcoco", data_root / "refer_seg" / "images" / "mscoco"
                         / "images" / "train2014")
    rng = random.Random(0)
    for _ in range(8):
        s = ds.sample(rng)
        answer = s.conversations[0][0][1]
        slots = [t for t in answer.replace("[", " [").split() if t.startswith(("[SEG]", "[REJ]"))]
        assert len(slots) == len(s.masks) and any(t.startswith("[SEG]") for t in slots)
        assert [t.startswith("[SEG]") for t in slots] == [bool(m.any()) for m in s.masks]


def test_tiny_gsva_trains_with_rejections(data_root, tmp_path):
    """A few LoRA steps of `lisa-train`'s Trainer on a tiny random GSVA: batches hold [REJ] slots, those targets
    are scored against all-zero logits, the losses stay finite and LoRA moves."""
    cfg = TrainConfig(model="tiny-random", family="gsva", tiny_config=TINY, dataset="refer_seg",
                      data_root=str(data_root), dtype="float32", gradient_checkpointing=False, batch_size=2,
                      grad_accumulation_steps=1, epochs=1, steps_per_epoch=3, warmup_steps=1, lr=1e-2,
                      eval_every=10 ** 9, save_every=10 ** 9, output_dir=str(tmp_path / "run"))
    trainer = Trainer(cfg)
    base = unwrap(trainer.model)
    assert base.family.name == "gsva" and trainer.collate.truncate_len == 1022
    rej = base.config.family_options["token_ids"]["[REJ]"]
    batch = trainer.collate(trainer.train_data.batch(0, 0, 0, cfg.batch_size))
    assert (batch.input_ids == rej).any()  # the data holds absent targets
    with torch.no_grad():
        out = trainer.model(clip_pixels=batch.clip_pixels, sam_pixels=batch.sam_pixels, input_ids=batch.input_ids,
                            labels=batch.labels, attention_mask=batch.attention_mask, offset=batch.offset,
                            gt_masks=batch.gt_masks, resize_list=batch.resize_list)
    for i, pred in enumerate(out["pred_masks"]):
        rows = batch.input_ids[batch.offset[i]:batch.offset[i + 1]]
        slots = rows[(rows == base.config.seg_token_id) | (rows == rej)]
        assert pred.shape == batch.gt_masks[i].shape and not pred[slots == rej].any()
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    history = trainer.train(max_steps=3)
    assert [h["step"] for h in history] == [1, 2, 3] and all(np.isfinite(h["loss"]) for h in history)
    moved = [n for n, p in trainer.model.named_parameters() if n in lora_before and not torch.equal(p, lora_before[n])]
    assert moved
