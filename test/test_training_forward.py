"""The training forward reproduces the reference's losses, and the mask loss reaches what must learn."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import FIXTURE, read_rgb
from lisa_model import LisaSegmenter
from training.config import TrainConfig
from training.lora import prepare_for_training

TRAIN = FIXTURE / "train_case"


def load_train_case(seg: LisaSegmenter):
    exp = json.loads((TRAIN / "expected.json").read_text())
    tensors = load_file(TRAIN / "expected.safetensors")
    clip, sam, resize, gts = [], [], [], []
    for item in exp["images"]:
        image = read_rgb(TRAIN / item["image"])
        clip.append(seg.clip_preprocessor(image))
        pixels, size = seg.sam_preprocessor(image)
        sam.append(pixels)
        resize.append(size)
        gts.append(torch.stack([torch.from_numpy((np.asarray(Image.open(TRAIN / g)) > 0).astype(np.float32))
                                for g in item["gt_masks"]]))
    batch = dict(clip_pixels=torch.cat(clip), sam_pixels=torch.cat(sam), input_ids=tensors["input_ids"],
                 labels=tensors["labels"], attention_mask=tensors["attention_masks"].long(),
                 offset=tensors["offset"].tolist(), gt_masks=gts, resize_list=resize)
    return exp, tensors, batch


@pytest.fixture()
def segmenter():
    seg = LisaSegmenter.from_pretrained(FIXTURE / "tiny-lisa", vision_tower=FIXTURE / "tiny-clip-vit")
    seg.model.model.language_model.config._attn_implementation = "eager"
    return seg


def test_losses_match_reference(segmenter):
    exp, tensors, batch = load_train_case(segmenter)
    model = segmenter.model.train()
    out = model(**batch)  # forward with gt_masks = the training forward
    for name, value in exp["losses_float32_reference"].items():
        assert float(out[name]) == pytest.approx(value, abs=1e-4), name
    for i, logits in enumerate(out["pred_masks"]):
        np.testing.assert_allclose(logits[:, ::4, ::4].detach().numpy(),
                                   tensors[f"pred_mask_logits_stride4_{i}"].numpy(), atol=1e-3)


def test_mask_loss_reaches_what_must_learn(segmenter):
    """Non-zero gradient of the mask loss w.r.t. the pre-[SEG] state, LoRA, the [SEG] head, the mask decoder."""
    _, _, batch = load_train_case(segmenter)
    model = prepare_for_training(segmenter.model, TrainConfig(gradient_checkpointing=False))
    states = {}

    def keep(module, args, output):  # the final-norm output holds every pre-[SEG] state
        output.retain_grad()
        states["h"] = output

    hook = segmenter.model.model.language_model.norm.register_forward_hook(keep)
    out = model(**batch, ce_weight=0.0)
    hook.remove()
    out["mask_loss"].backward()
    positions = segmenter.model.seg_state_positions(batch["input_ids"])
    grads_at_seg = [states["h"].grad[r, p].abs().sum() for r, p in enumerate(positions)]
    assert all(g > 0 for g in grads_at_seg)
    named = dict(model.named_parameters())
    lora = [p for n, p in named.items() if "lora_A" in n or "lora_B" in n]
    assert lora and any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    for prefix in ("seg_projection.", "sam.mask_decoder."):
        ps = [p for n, p in named.items() if n.removeprefix("base_model.model.").startswith(prefix)
              and "iou_prediction_head" not in n]
        assert ps and all(p.requires_grad for p in ps)
        assert sum(float(p.grad.abs().sum()) for p in ps if p.grad is not None) > 0, prefix
    # SAM's IoU head is in no loss (never a gradient, never changed by the reference's AdamW): frozen, for DDP.
    iou_head = [p for n, p in named.items() if "iou_prediction_head" in n]
    assert iou_head and not any(p.requires_grad or p.grad is not None for p in iou_head)
    frozen = [p for n, p in named.items() if ".vision_tower." in n or "sam.image_encoder." in n]
    assert frozen and not any(p.requires_grad for p in frozen)


def test_masks_stay_paired_with_their_sample(segmenter):
    """Swapping the two images (and their conversations and masks) swaps the predicted masks with them."""
    _, _, batch = load_train_case(segmenter)
    model = segmenter.model.eval()
    with torch.no_grad():
        a = model(**batch)["pred_masks"]
        swapped = dict(batch)
        rows = [2, 0, 1]  # image 1's single conversation first, then image 0's two
        for k in ("input_ids", "labels", "attention_mask"):
            swapped[k] = batch[k][rows]
        for k in ("clip_pixels", "sam_pixels"):
            swapped[k] = batch[k].flip(0)
        swapped.update(offset=[0, 1, 3], gt_masks=batch["gt_masks"][::-1], resize_list=batch["resize_list"][::-1])
        b = model(**swapped)["pred_masks"]
    assert [m.shape for m in a] == [m.shape for m in b[::-1]]
    for x, y in zip(a, b[::-1]):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=0)
