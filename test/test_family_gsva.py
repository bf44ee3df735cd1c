"""GSVA (lisa_model.families.gsva) against the official code's outputs on a tiny release-layout checkpoint.

Fixture: test/fixtures/gsva_tiny_reference (README there): the bare `.bin` of the peft-wrapped model (LoRA
unmerged), the base LLaVA folder (config + tokenizer), the CLIP folder; per case the generation, the teacher-forced
evaluation (eval_gres, reeval) and validate's single pass; a training forward.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import read_rgb
from lisa_model import CheckpointError, LisaSegmenter
from lisa_model.families.gsva import slot_pass
from lisa_model.generation import greedy_generate
from lisa_model.tokenization import collate_conversations

GSVA = Path(__file__).resolve().parent / "fixtures" / "gsva_tiny_reference"
RELEASE = GSVA / "gsva-tiny-ft-gres.bin"
BASE = GSVA / "tiny-llava-v1-1"
CLIP = GSVA / "tiny-clip-vit-large-patch14"
CASES = sorted(p for p in (GSVA / "cases").iterdir() if p.is_dir())
SEG, REJ = 1000, 1001
# Acceptance: logits within 1e-3 (the fixture's bound). Regression: measured in float32, mask logits (stride-4
# samples) at most 2.0e-7 off, slot embeddings 7.5e-7, training losses 1.9e-6 (LoRA merged at load vs peft's
# unmerged run, SDPA on both sides). A 100x loss of precision fails here while passing acceptance.
ACCEPT_ATOL = 1e-3
REGRESSION_ATOL = 1e-5


@pytest.fixture(scope="module")
def segmenter() -> LisaSegmenter:
    # no family=: recognised from the key names (peft prefix + LoRA pairs + SAM)
    return LisaSegmenter.from_pretrained(RELEASE, base_model=BASE, vision_tower=CLIP)


def load_case(case: Path) -> tuple[dict, dict, np.ndarray]:
    return (json.loads((case / "expected.json").read_text()), load_file(case / "expected.safetensors"),
            read_rgb(case / "image.png"))


def png_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


def assert_logits(ours: np.ndarray, reference: np.ndarray) -> float:
    """Both bounds; returns the max abs difference."""
    diff = float(np.abs(ours - reference).max()) if ours.size else 0.0
    assert diff <= ACCEPT_ATOL
    assert diff <= REGRESSION_ATOL, diff
    return diff


def assert_binarised(logits: np.ndarray, ours: np.ndarray, reference_png: Path) -> None:
    """Pixels may flip only where the logit sits within the regression bound of 0 (e.g. case 3's generation: one
    pixel at |logit| < 1e-6, states from the KV-cached decoding vs the reference's full recompute)."""
    flipped = ours != png_mask(reference_png)
    assert flipped.sum() <= 5 and (np.abs(logits[flipped]) < REGRESSION_ATOL).all()


def question(exp: dict) -> str:
    """The user text after the image line (GSVA's eval prompt starts it with a space: "\\n What are ...")."""
    return exp["generation"]["prompt"].split("<im_end>\n", 1)[1].rsplit(" ASSISTANT:", 1)[0]


def test_recognised_as_gsva(segmenter):
    cfg = segmenter.model.config
    assert segmenter.model.family.name == "gsva" and cfg.family == "gsva"
    assert segmenter.tokenizer.added_tokens == {"[SEG]": SEG, "[REJ]": REJ, "<im_start>": 1002, "<im_end>": 1003}
    assert cfg.family_options["lora_alpha"] == 16 and cfg.family_options["token_ids"] == {"[REJ]": REJ}
    assert cfg.mm_use_im_start_end and cfg.text_config.vocab_size == 1004 and cfg.conv_template == "llava_v1"


def test_lora_is_merged_and_the_release_wins(segmenter):
    """q/v = W + 16/8 * B @ A (the fixture's deltas are about twice W: a missed merge cannot pass); the .bin's
    projector (re-initialised by GSVA, not the base folder's) and its bf16 CLIP copy are what the model holds."""
    raw = torch.load(RELEASE, map_location="cpu", weights_only=True)
    p = "base_model.model.model.layers.1.self_attn.v_proj."
    expected = raw[p + "weight"].double() + 2.0 * raw[p + "lora_B.default.weight"].double() @ raw[
        p + "lora_A.default.weight"].double()
    ours = dict(segmenter.model.named_parameters())
    torch.testing.assert_close(ours["model.language_model.layers.1.self_attn.v_proj.weight"].double(), expected,
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(ours["model.multi_modal_projector.linear.weight"],
                               raw["base_model.model.model.mm_projector.weight"].float(), atol=0, rtol=0)
    name = "encoder.layers.0.self_attn.k_proj.weight"
    clip = ours["model.vision_tower." + name]
    released = raw["base_model.model.model.vision_tower.vision_tower.vision_model." + name]
    torch.testing.assert_close(clip, released.float(), atol=0, rtol=0)
    assert not torch.equal(clip, load_file(CLIP / "model.safetensors")["vision_model." + name])  # bf16 copy won


def test_preprocessing_matches_reference(segmenter):
    exp, tensors, image = load_case(CASES[0])
    clip = segmenter.clip_preprocessor(image)
    np.testing.assert_allclose(clip[0, :, ::8, ::8].numpy(), tensors["images_clip_stride8"].reshape(
        clip[0, :, ::8, ::8].shape).numpy(), atol=1e-5)
    sam, size = segmenter.sam_preprocessor(image)
    assert list(size) == exp["sam_resize_hw"]
    assert float(sam.double().sum()) == pytest.approx(exp["sam_input_sum"], rel=1e-6)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_generation_matches_reference(segmenter, case):
    """Greedy decoding (KV cache) gives the reference's ids; [SEG] slots get masks from the reeval pass,
    [REJ] slots become rejections without a mask."""
    exp, tensors, image = load_case(case)
    gen = exp["generation"]
    result = segmenter.segment(image, question(exp), max_new_tokens=gen["max_new_tokens"])
    assert result.input_ids == gen["prompt_ids"]
    assert gen["stopped_on_eos"] and result.output_ids == gen["generated_ids"][:-1]  # eos is not returned
    tok = segmenter.tokenizer
    assert tok.decode(gen["generated_ids"]) == gen["decoded_generated"]
    assert tok.decode(gen["output_ids"]) == gen["decoded_full_raw"]
    assert result.text == tok.decode(result.output_ids)
    seg_slots = [k for k, t in enumerate(gen["slot_order"]) if t == "[SEG]"]
    assert len(result.labels) == gen["num_seg"] and len(result.rejected) == gen["num_rej"]
    assert result.family == "gsva" and result.masks.shape == (gen["num_seg"], *exp["image_hw"])
    diff = assert_logits(result.mask_logits[:, ::4, ::4],
                         tensors["gen_reeval_pred_mask_logits_stride4"][seg_slots].numpy())
    for j, k in enumerate(seg_slots):
        assert_binarised(result.mask_logits[j], result.masks[j], case / f"gen_pred_mask_{k}.png")
        assert result.mask_logits[j].astype(np.float64).sum() == pytest.approx(
            gen["reeval"]["masks"][k]["sum"], rel=1e-6)
    print(f"{case.name} generation: max |logit diff| {diff:.2e}")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_generation_states(segmenter, case):
    """States gathered while decoding = validate's single pass; the reeval pass differs after a [REJ]."""
    exp, tensors, image = load_case(case)
    gen = exp["generation"]
    model, feats = segmenter.model, segmenter.set_image(image)
    embeds, _, _ = model.splice_image(torch.tensor([gen["prompt_ids"]]), feats.clip_tokens)
    out = greedy_generate(model, embeds, gen["max_new_tokens"], 2, SEG)
    with torch.no_grad():
        assert_logits(model.seg_projection(out.seg_states).numpy(), tensors["gen_seg_only_slot_embeddings"].numpy())
        p = slot_pass(model, torch.tensor([gen["output_ids"]]), feats.clip_tokens, reeval=True)
        assert_logits(model.seg_projection(p.states).numpy(), tensors["gen_reeval_slot_embeddings"].numpy())
    assert [segmenter.tokenizer.convert_ids_to_tokens(d) for d in p.decisions] == gen["reeval"]["pred_slot_tokens"]
    assert (p.positions.tolist() == gen["reeval"]["mask_hidden_rows"])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_teacher_forced_evaluation_matches_reference(segmenter, case):
    """eval_gres's path (decisions, reeval states, a mask for every slot) and validate's (one pass, [SEG] only)."""
    exp, tensors, image = load_case(case)
    ev = exp["eval"]
    model, tok = segmenter.model, segmenter.tokenizer
    assert tok.encode_prompt(ev["conversation"]) == ev["input_ids"]
    ids = torch.tensor([ev["input_ids"]])
    feats = segmenter.set_image(image)
    with torch.no_grad():
        p = slot_pass(model, ids, feats.clip_tokens, reeval=True)
        logits = model.masks_from_states(p.states, feats.sam_embedding, feats.input_size, feats.original_size)
        embeddings = model.seg_projection(p.states)
    assert [tok.convert_ids_to_tokens(t) for t in p.given] == ev["gt_slot_tokens"]
    assert [tok.convert_ids_to_tokens(d) for d in p.decisions] == ev["pred_slot_tokens"]
    assert p.positions.tolist() == ev["mask_hidden_rows_reeval_pass"]
    expanded = ids[0].tolist()
    for k, pos in enumerate(ev["slot_positions"]):
        expanded[pos] = p.decisions[k]
    at = expanded.index(-200)
    assert expanded[:at] + [0] * 256 + expanded[at + 1:] == ev["output_ids_expanded"]
    assert_logits(embeddings.numpy(), tensors["eval_slot_embeddings"].numpy())
    diff = assert_logits(logits[:, ::4, ::4].numpy(), tensors["eval_pred_mask_logits_stride4"].numpy())
    for k, slot in enumerate(ev["slots"]):
        assert_binarised(logits[k].numpy(), (logits[k] >= 0).numpy(), case / f"pred_mask_{k}.png")
        assert float(logits[k].double().sum()) == pytest.approx(slot["mask_stats"]["sum"], rel=1e-6)
    # validate's single pass = the library's teacher-forced path (state before each [SEG] of the given ids)
    with torch.no_grad():
        positions = model.seg_state_positions(ids)[0]
        seg_only = model.seg_projection(model.forced_states(ids, feats.clip_tokens)[0, positions])
    assert positions.tolist() == exp["seg_only"]["mask_hidden_rows"]
    assert_logits(seg_only.numpy(), tensors["seg_only_slot_embeddings"].numpy())
    print(f"{case.name} eval: max |logit diff| {diff:.2e}")


def test_eval_gres_scores(segmenter):
    """The fixture's eval_gres numbers, recomputed from our eval-path masks with GSVA's rules (gIoU per
    expression, cIoU with a kept empty target's area in the union, N-acc / T-acc from the slot decisions)."""
    reference = json.loads((GSVA / "eval_gres.json").read_text())
    inter = union = 0.0
    samples, counts = [], {"TP": 0, "FN": 0, "FP": 0, "TN": 0}
    for name in reference["cases"]:
        exp, _, image = load_case(GSVA / "cases" / name)
        feats = segmenter.set_image(image)
        with torch.no_grad():
            p = slot_pass(segmenter.model, torch.tensor([exp["eval"]["input_ids"]]), feats.clip_tokens)
            logits = segmenter.model.masks_from_states(p.states, feats.sam_embedding, feats.input_size,
                                                       feats.original_size)
        for k, decision in enumerate(p.decisions):
            pred, gt = (logits[k] >= 0).numpy(), png_mask(GSVA / "cases" / name / f"gt_mask_{k}.png")
            rejected = decision == REJ
            if gt.sum() < 1:
                counts["TP" if rejected else "FN"] += 1
                samples.append(1.0 if rejected else 0.0)
                union += 0 if rejected else pred.sum()
                continue
            counts["FP" if rejected else "TN"] += 1
            i, u = (pred & gt).sum(), (pred | gt).sum()
            inter, union = inter + i, union + u
            samples.append(i / (u + 1e-8))
    assert sum(samples) / (len(samples) + 1e-5) == pytest.approx(reference["giou"], abs=1e-6)
    assert inter / (union + 1e-10) == pytest.approx(reference["ciou"], abs=1e-6)
    assert counts["TP"] / (counts["TP"] + counts["FN"]) == pytest.approx(reference["N_acc"])
    assert counts["TN"] / (counts["TN"] + counts["FP"]) == pytest.approx(reference["T_acc"])


def test_training_forward_matches_reference(segmenter):
    """Our collate gives the reference's ids and labels; the training forward its losses, with each [REJ]
    target scored against all-zero logits (CE only teaches it)."""
    train = GSVA / "train_case"
    exp, tensors = json.loads((train / "expected.json").read_text()), load_file(train / "expected.safetensors")
    convs = [c.replace("<im_start><image><im_end>", "<image>") for c in exp["conversations"]]
    text = collate_conversations(segmenter.tokenizer, convs, "llava_v1", True, truncate_len=None)
    for key, ref in (("input_ids", "input_ids"), ("labels", "labels"), ("attention_mask", "attention_masks")):
        assert text[key].tolist() == tensors[ref].long().tolist(), key
    clip, sam, resize, gts = [], [], [], []
    for i, item in enumerate(exp["per_image"]):
        image = read_rgb(train / f"image_{i}.png")
        clip.append(segmenter.clip_preprocessor(image))
        pixels, size = segmenter.sam_preprocessor(image)
        sam.append(pixels)
        resize.append(size)
        gts.append(torch.stack([torch.from_numpy(png_mask(train / f"gt_mask_{i}_{k}.png").astype(np.float32))
                                for k in range(len(item["slot_tokens"]))]))
    assert [list(r) for r in resize] == exp["resize_list"]
    model = segmenter.model.train()
    try:
        out = model(clip_pixels=torch.cat(clip), sam_pixels=torch.cat(sam), input_ids=text["input_ids"],
                    labels=text["labels"], attention_mask=text["attention_mask"].long(), offset=exp["offset"],
                    gt_masks=gts, resize_list=resize)
    finally:
        model.eval()
    for name, value in exp["losses"].items():
        out[name] = out[name].detach()
        assert float(out[name]) == pytest.approx(value, abs=1e-4), name
        assert float(out[name]) == pytest.approx(value, rel=1e-5), name
    for i, item in enumerate(exp["per_image"]):
        pred = out["pred_masks"][i]
        assert_logits(pred[:, ::4, ::4].detach().numpy(), tensors[f"loss_mask_logits_stride4_{i}"].numpy())
        rej = [k for k, t in enumerate(item["slot_tokens"]) if t == "[REJ]"]
        assert not pred[rej].any()
    seg = torch.cat(out["seg_states"])
    assert_logits(model.seg_projection(seg).detach().numpy(), tensors["seg_embeddings"].numpy())


def test_our_layout_round_trips(segmenter, tmp_path):
    _, _, image = load_case(CASES[0])
    q = "What are the red ball, the green car in this image?"
    before = segmenter.segment(image, q, max_new_tokens=8)
    segmenter.save_pretrained(tmp_path)
    again = LisaSegmenter.from_pretrained(tmp_path)
    assert again.model.config.family == "gsva" and again.tokenizer.keep_whitespace
    after = again.segment(image, q, max_new_tokens=8)
    assert (after.input_ids, after.output_ids, after.rejected) == (before.input_ids, before.output_ids,
                                                                    before.rejected)
    np.testing.assert_array_equal(after.mask_logits, before.mask_logits)


def test_release_folder_and_explicit_family():
    seg = LisaSegmenter.from_pretrained(GSVA, base_model=BASE, vision_tower=CLIP, family="gsva")
    assert seg.model.family.name == "gsva"


def test_lora_alpha_is_a_family_option():
    seg = LisaSegmenter.from_pretrained(RELEASE, base_model=BASE, vision_tower=CLIP, family_options={"lora_alpha": 8})
    assert seg.model.config.family_options["lora_alpha"] == 8
    exp, _, image = load_case(CASES[0])
    assert seg.segment(image, question(exp)).output_ids != exp["generation"]["generated_ids"][:-1]


def test_bare_release_without_base_model_says_what_to_pass():
    with pytest.raises(CheckpointError, match="base_model="):
        LisaSegmenter.from_pretrained(RELEASE, vision_tower=CLIP)


def test_partial_and_unknown_bare_layouts_fail_clearly(tmp_path):
    raw = torch.load(RELEASE, map_location="cpu", weights_only=True)
    torch.save({k: v for k, v in raw.items() if "image_encoder" not in k}, tmp_path / "partial.bin")
    with pytest.raises(CheckpointError, match="not a complete gsva state dict, nothing for SAM image encoder"):
        LisaSegmenter.from_pretrained(tmp_path / "partial.bin", base_model=BASE, vision_tower=CLIP)
    torch.save({k: v for k, v in raw.items() if v.dtype == torch.float32}, tmp_path / "trainable.bin")
    with pytest.raises(CheckpointError, match="frozen base weights are missing"):
        LisaSegmenter.from_pretrained(tmp_path / "trainable.bin", base_model=BASE, vision_tower=CLIP)
    no_b = {k: v for k, v in raw.items() if "layers.0.self_attn.q_proj.lora_B" not in k}
    torch.save(no_b, tmp_path / "half_lora.bin")
    with pytest.raises(CheckpointError, match="q_proj is not one lora_A/lora_B pair"):
        LisaSegmenter.from_pretrained(tmp_path / "half_lora.bin", base_model=BASE, vision_tower=CLIP)
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.bin")
    with pytest.raises(CheckpointError, match="no model family recognises"):
        LisaSegmenter.from_pretrained(tmp_path / "other.bin", base_model=BASE, vision_tower=CLIP)
    (tmp_path / "two").mkdir()
    for name in ("a.bin", "b.bin"):
        torch.save({}, tmp_path / "two" / name)
    with pytest.raises(CheckpointError, match="several weights files"):
        LisaSegmenter.from_pretrained(tmp_path / "two", base_model=BASE, vision_tower=CLIP)


def test_answer_reading():
    from lisa_model.families.gsva import target_phrase

    assert target_phrase("Sure,the red ball:") == "the red ball"
    assert target_phrase(", two blue boxes:") == "two blue boxes"
    assert target_phrase("The segmentation results are gray bar") == "gray bar"
    assert target_phrase("Sure, the mask of the pink blob is") == "the pink blob"
    assert target_phrase(", the referred cat is") == "cat"
    assert target_phrase("") == ""


def test_command_line_takes_the_base_model(tmp_path):
    from lisa_model.cli import main as lisa_segment

    case = CASES[0]
    exp = json.loads((case / "expected.json").read_text())
    assert lisa_segment(["--model", str(RELEASE), "--base-model", str(BASE), "--vision-tower", str(CLIP),
                         "--out", str(tmp_path), str(case / "image.png"), question(exp)]) == 0
    summary = json.loads((tmp_path / "image_result.json").read_text())
    assert summary["family"] == "gsva" and summary["output_ids"] == exp["generation"]["generated_ids"][:-1]
    assert len(summary["rejected"]) == exp["generation"]["num_rej"]
