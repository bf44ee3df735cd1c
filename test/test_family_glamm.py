"""GLaMM: the released-layout tiny checkpoint reproduces the official code's outputs, and GLaMM trains.

Fixture: test/fixtures/glamm_tiny_reference (random tiny weights, run by github.com/mbzuai-oryx/groundingLMM in
float32; see its README). Semantics: docs/families/glamm.md.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import ROOT, read_rgb
from lisa_model import CheckpointError, LisaSegmenter
from lisa_model.families import FAMILIES, detect_family
from lisa_model.families.glamm import GLAMM
from training.collate import Collator
from training.data.sample import Sample
from training.evaluate import teacher_forced_logits

FIXTURE = ROOT / "test" / "fixtures" / "glamm_tiny_reference"
CKPT, CLIP = FIXTURE / "tiny-glamm", FIXTURE / "tiny-clip-vit-336"
TRAIN = FIXTURE / "train_case"
CASES = sorted(p for p in (FIXTURE / "cases").iterdir() if p.is_dir())
# Acceptance: the fixture's 1e-3 on float32 logits. Regression: what we measure in float32, with room - mask logits
# up to 2.4e-6 off (generated cases), 3.3e-6 (teacher-forced case3), [SEG] states 4.8e-7 and embeddings 6.0e-7,
# no pixel flipped; training losses 4.8e-7.
ACCEPT_ATOL = 1e-3
REGRESSION_ATOL = 1e-5
RELEASE_ORDER = ["<im_start>", "<im_end>", "<bbox>", "<point>", "[SEG]", "<p>", "</p>"]


@pytest.fixture(scope="module")
def segmenter():
    return LisaSegmenter.from_pretrained(CKPT, vision_tower=CLIP)  # no family=: recognised from the checkpoint


def labels_of(exp: dict) -> list[str]:
    return [pair["phrase"] or "" for pair in exp["mask_phrase_pairs_gcg_eval"]]


# ----- loading --------------------------------------------------------------------------------------------------
def test_released_layout_is_recognised(segmenter):
    cfg = segmenter.model.config
    assert cfg.family == "glamm" and segmenter.model.family is GLAMM
    assert list(FAMILIES)[-1] == "lisa" and list(FAMILIES).index("glamm") < list(FAMILIES).index("lisa")
    tok = segmenter.tokenizer.added_tokens
    assert sorted(tok, key=tok.get) == RELEASE_ORDER and cfg.seg_token_id == tok["[SEG]"] == 1004
    assert (segmenter.clip_preprocessor.size, segmenter.clip_preprocessor.crop) == (336, 336)  # centre crop
    assert cfg.projector_type == "mlp2x_gelu" and cfg.num_image_tokens == 576
    g = cfg.sam_geometry
    assert (g.embed_dim, g.depth, g.num_heads, g.global_attn_indexes) == (32, 2, 2, (1,))
    assert not any("region" in n for n, _ in segmenter.model.named_parameters())  # dropped at load
    # detection by key names alone (a config without architectures)
    assert detect_family({}, ["model.grounding_encoder.mask_decoder.x"]) is GLAMM


def _rewrite_shards(folder, edit):
    for shard in sorted(folder.glob("pytorch_model-*.bin")):
        state = torch.load(shard, weights_only=True)
        torch.save({k: v for k, v in state.items() if edit(k)}, shard)


def test_missing_sam_and_unknown_keys_are_clear_errors(tmp_path):
    copy = tmp_path / "tiny-glamm"
    shutil.copytree(CKPT, copy)
    _rewrite_shards(copy, lambda k: "mask_decoder" not in k)
    with pytest.raises(CheckpointError, match="weights missing from the checkpoint: sam.mask_decoder"):
        LisaSegmenter.from_pretrained(copy, vision_tower=CLIP)
    _rewrite_shards(copy, lambda k: not k.startswith("model.grounding_encoder."))
    with pytest.raises(CheckpointError, match=r"no usable SAM in this glamm checkpoint \(0 SAM tensors found\)"):
        LisaSegmenter.from_pretrained(copy, vision_tower=CLIP)
    shutil.rmtree(copy)
    shutil.copytree(CKPT, copy)
    shard = copy / "pytorch_model-00001-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    torch.save({**state, "model.surprise.weight": torch.zeros(2)}, shard)
    with pytest.raises(CheckpointError, match="unexpected keys.*model.surprise.weight"):
        LisaSegmenter.from_pretrained(copy, vision_tower=CLIP)


def test_our_layout_round_trip(segmenter, tmp_path):
    segmenter.save_pretrained(tmp_path / "ours")
    again = LisaSegmenter.from_pretrained(tmp_path / "ours")
    assert again.model.config.family == "glamm" and again.tokenizer.added_tokens == segmenter.tokenizer.added_tokens
    assert again.clip_preprocessor == segmenter.clip_preprocessor
    a, b = segmenter.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    image = read_rgb(FIXTURE / "cases" / "case2_333x500_seg" / "image.png")
    ra, rb = segmenter.segment(image, "Can you segment the dog?", 6), again.segment(image, "Can you segment the dog?", 6)
    assert ra.output_ids == rb.output_ids and ra.labels == rb.labels
    np.testing.assert_array_equal(ra.mask_logits, rb.mask_logits)
    from lisa_model.export import export_released

    with pytest.raises(ValueError, match="model family 'glamm'.*loads back as 'lisa'"):  # LISA's layout only
        export_released(segmenter, None, tmp_path / "released", vision_tower=str(CLIP))


# ----- inference ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_matches_reference(segmenter, case):
    exp = json.loads((case / "expected.json").read_text())
    if "bbox_img_xyxy" in exp:
        pytest.skip("region (<bbox>) prompts: the region encoder is dropped at load (lisa_model/families/glamm.py)")
    tensors = load_file(case / "expected.safetensors")
    image = read_rgb(case / "image.png")
    # preprocessing: CLIP at 336 (centre crop) and SAM's input, as the reference's
    np.testing.assert_allclose(segmenter.clip_preprocessor(image)[0, :, ::8, ::8], tensors["images_clip_stride8"],
                               atol=1e-6, rtol=0)
    sam_pixels, size = segmenter.sam_preprocessor(image)
    assert list(size) == exp["sam_resize_hw"]
    np.testing.assert_allclose(sam_pixels[0, :, ::16, ::16], tensors["grounding_input_stride16"], atol=1e-5, rtol=0)

    result = segmenter.segment(image, exp["instruction"], max_new_tokens=exp["max_new_tokens"])
    assert result.input_ids == exp["input_ids"]
    assert result.output_ids == exp["generated_ids"]
    assert result.text == exp["text_output_demo"]
    assert result.family == "glamm" and result.labels == labels_of(exp) == exp["gcg_eval_phrases"][:exp["num_seg"]]
    assert segmenter.plain_text(result.text) == exp["gcg_eval_caption"]
    ref = tensors["pred_mask_logits_stride4"].numpy()
    assert result.mask_logits.shape == (exp["num_seg"], *exp["original_hw"])
    np.testing.assert_allclose(result.mask_logits[:, ::4, ::4], ref, atol=ACCEPT_ATOL, rtol=0)
    np.testing.assert_allclose(result.mask_logits[:, ::4, ::4], ref, atol=REGRESSION_ATOL, rtol=0)
    if "pred_mask_logits_full" in tensors:
        np.testing.assert_allclose(result.mask_logits, tensors["pred_mask_logits_full"], atol=REGRESSION_ATOL, rtol=0)
    h, w = exp["original_hw"]
    coords = [(y, x) for y, x in exp["fixed_coords_yx"] if y < h and x < w]
    for k, stats in enumerate(exp["masks"]):
        logits = result.mask_logits[k].astype(np.float64)
        assert logits.mean() == pytest.approx(stats["mean"], abs=REGRESSION_ATOL)
        np.testing.assert_allclose([logits[y, x] for y, x in coords], stats["values_at_coords"],
                                   atol=REGRESSION_ATOL, rtol=0)
        assert ((np.asarray(Image.open(case / f"pred_mask_{k}.png")) > 0) != result.masks[k]).sum() == 0


def test_seg_states_and_embeddings_match_reference(segmenter):
    """The state before each [SEG] (post-norm) and its 256-d embedding, from the reference's full sequence."""
    case = FIXTURE / "cases" / "case1_640x427_gcg"
    exp = json.loads((case / "expected.json").read_text())
    tensors = load_file(case / "expected.safetensors")
    model = segmenter.model
    feats = segmenter.set_image(read_rgb(case / "image.png"))
    ids = torch.tensor([exp["output_ids"]])
    with torch.no_grad():
        states = model.forced_states(ids, feats.clip_tokens)[0]
        positions = model.seg_state_positions(ids)[0]
        seg = model.seg_projection(states[positions])
    assert positions.tolist() == exp["seg_hidden_positions"]
    np.testing.assert_allclose(states[positions], tensors["seg_hidden_states"], atol=REGRESSION_ATOL, rtol=0)
    np.testing.assert_allclose(seg, tensors["seg_embeddings"], atol=REGRESSION_ATOL, rtol=0)


def test_teacher_forced_referring_path(segmenter):
    """case3's referring evaluation: a two-turn conversation whose answers' [SEG]s carry no phrase."""
    case = FIXTURE / "cases" / "case3_257x181_refseg"
    tf = json.loads((case / "expected.json").read_text())["teacher_forced"]
    tensors = load_file(case / "expected.safetensors")
    (q1, a1), (q2, a2) = tf["qa"]
    ids, logits = teacher_forced_logits(segmenter, read_rgb(case / "image.png"), [("<image>\n" + q1, a1), (q2, a2)])
    assert ids == tf["input_ids"] == tensors["tf_input_ids"].tolist()
    assert segmenter.tokenizer.tokenize_conversation(tf["conversation"])[1] == tf["labels"]
    np.testing.assert_allclose(logits.numpy(), tensors["tf_pred_mask_logits_full"], atol=REGRESSION_ATOL, rtol=0)
    for k in range(tf["num_seg"]):
        assert ((np.asarray(Image.open(case / f"tf_pred_mask_{k}.png")) > 0) != (logits[k] > 0).numpy()).sum() == 0


def test_labels_pair_masks_with_phrases_by_index(segmenter):
    tok = segmenter.tokenizer
    read = lambda text: GLAMM.read_answer(tok.encode(text, add_bos=False), tok).labels  # noqa: E731
    assert read("<p> A dog </p> [SEG] sits next to <p> a red ball </p> [SEG] on the grass.") == ["A dog", "a red ball"]
    assert read("Sure, it is [SEG].") == [""]
    assert read("<p> a cup </p> [SEG] and [SEG] and <p> a pen") == ["a cup", ""]  # k-th phrase <-> k-th mask
    assert read("no masks <p> here </p>") == []
    assert GLAMM.plain_text("the <p> red cup </p> [SEG] and <p>") == "the red cup and"


# ----- training -------------------------------------------------------------------------------------------------
def test_training_forward_matches_reference(segmenter):
    """Our collate (GLaMM's phrasing) gives the reference's ids and labels; the training forward its losses."""
    exp = json.loads((TRAIN / "expected.json").read_text())
    tensors = load_file(TRAIN / "expected.safetensors")
    samples = []
    for i, questions in enumerate(exp["questions"]):
        answers = [exp["conversations"][i].split(" ASSISTANT: ")[k + 1].split("</s>")[0]
                   for k in range(len(questions))]
        turns = [("<image>\n" + q if k == 0 else q, a) for k, (q, a) in enumerate(zip(questions, answers))]
        masks = [(np.asarray(Image.open(path)) > 0).astype(np.uint8)
                 for path in sorted(TRAIN.glob(f"gt_mask_{i}_*.png"))]
        samples.append(Sample(f"s{i}", [turns], masks, "fixture", image=read_rgb(TRAIN / f"image_{i}.png")))
    model = segmenter.model
    collate = Collator(segmenter.tokenizer, model.config.conv_template, segmenter.clip_preprocessor,
                       segmenter.sam_preprocessor, model.config.mm_use_im_start_end,
                       model.family.train_text_limit(model.config), model.family)
    assert collate.truncate_len == 1536 - 575
    batch = collate(samples)
    assert torch.equal(batch.input_ids, tensors["input_ids"]) and torch.equal(batch.labels, tensors["labels"])
    assert torch.equal(batch.attention_mask, tensors["attention_masks"].long())
    assert batch.offset == exp["offset"] and [list(s) for s in batch.resize_list] == exp["resize_list"]
    lm_config = model.model.language_model.config
    attn, lm_config._attn_implementation = lm_config._attn_implementation, "eager"
    try:
        out = model.train()(clip_pixels=batch.clip_pixels, sam_pixels=batch.sam_pixels, input_ids=batch.input_ids,
                            labels=batch.labels, attention_mask=batch.attention_mask, offset=batch.offset,
                            gt_masks=batch.gt_masks, resize_list=batch.resize_list)
    finally:
        model.eval()
        lm_config._attn_implementation = attn
    for name, value in exp["losses"].items():
        assert out[name].item() == pytest.approx(value, abs=1e-5), name
    for i, logits in enumerate(out["pred_masks"]):
        np.testing.assert_allclose(logits[:, ::4, ::4].detach().numpy(), tensors[f"pred_mask_logits_stride4_{i}"],
                                   atol=REGRESSION_ATOL, rtol=0)
    seg = model.seg_projection(torch.cat(out["seg_states"])).detach()
    np.testing.assert_allclose(seg, tensors["seg_embeddings_all"], atol=REGRESSION_ATOL, rtol=0)


def test_tiny_random_glamm_answers_and_trains(tmp_path):
    from training.config import TrainConfig
    from training.synthetic import write_split
    from training.train import Trainer

    seg = LisaSegmenter.from_pretrained("tiny-random", family="glamm")
    assert seg.model.family is GLAMM and {"<p>", "</p>", "<bbox>", "<point>"} <= set(seg.tokenizer.added_tokens)
    ids = seg.prompt_ids("where is the cup?")
    assert seg.tokenizer.decode(ids).count("provides an overview of the picture.") == 1
    r = seg.segment(np.zeros((48, 64, 3), np.uint8), "where is the cup?", max_new_tokens=4)
    assert r.family == "glamm" and len(r.labels) == len(r.masks)

    write_split(tmp_path / "data" / "train", 4, 64, (2, 2), 0)
    cfg = TrainConfig.load(ROOT / "training" / "configs" / "synthetic_query_learning.yaml", family="glamm",
                           data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "run"), train_everything=False,
                           probe_weight=0.0, probe_classes=0, steps_per_epoch=3, warmup_steps=1, batch_size=2,
                           eval_every=10 ** 9, save_every=10 ** 9)
    trainer = Trainer(cfg)
    assert trainer.segmenter.model.family is GLAMM and trainer.collate.family is GLAMM
    batch = trainer.collate(trainer.train_data.batch(0, 0, 0, 2))
    assert "provides an overview of the picture." in seg.tokenizer.decode(batch.input_ids[0].tolist())
    history = trainer.train(max_steps=3)
    assert [h["step"] for h in history] == [1, 2, 3] and all(np.isfinite(h["loss"]) for h in history)
    assert any("lora_" in n and p.requires_grad for n, p in trainer.model.named_parameters())
