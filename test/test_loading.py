"""Checkpoint loading: geometry from shapes, our layout round trip, precisions, and clear errors."""
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import FIXTURE, read_rgb
from lisa_model import CheckpointError, LisaSegmenter
from lisa_model.checkpoint import tensor_shapes, weight_files
from lisa_model.configuration_lisa import SAM_PRESETS
from lisa_model.modeling.sam import build_sam, infer_sam_geometry

IMAGE = FIXTURE / "cases" / "case2_333x500" / "image.png"
INSTRUCTION = "Can you segment the dog in this image?"


@pytest.fixture(scope="module")
def released():
    return LisaSegmenter.from_pretrained(FIXTURE / "tiny-lisa", vision_tower=FIXTURE / "tiny-clip-vit")


@pytest.fixture()
def tiny_copy(tmp_path):
    """A writable copy of the released-layout fixture checkpoint."""
    dst = tmp_path / "tiny-lisa"
    shutil.copytree(FIXTURE / "tiny-lisa", dst)
    return dst


@pytest.mark.parametrize("name", sorted(SAM_PRESETS))
def test_sam_geometry_read_from_shapes(name):
    with torch.device("meta"):
        sam = build_sam(SAM_PRESETS[name])
    shapes = {f"model.visual_model.{k}": v.shape for k, v in sam.state_dict().items()}
    assert infer_sam_geometry(shapes, "model.visual_model.") == SAM_PRESETS[name]


def test_fixture_sam_geometry_is_tiny():
    shapes = tensor_shapes(weight_files(FIXTURE / "tiny-lisa"))
    g = infer_sam_geometry(shapes, "model.visual_model.")
    assert (g.embed_dim, g.depth, g.num_heads, g.global_attn_indexes, g.image_size) == (32, 2, 2, (1,), 1024)


def test_our_layout_round_trip_is_exact(released, tmp_path):
    released.save_pretrained(tmp_path / "ours")
    again = LisaSegmenter.from_pretrained(tmp_path / "ours")
    a, b = released.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    image = read_rgb(IMAGE)
    ra, rb = released.segment(image, INSTRUCTION, 24), again.segment(image, INSTRUCTION, 24)
    assert ra.output_ids == rb.output_ids and ra.text == rb.text
    np.testing.assert_array_equal(ra.mask_logits, rb.mask_logits)


def test_second_question_reuses_image_features(released):
    """The first question encodes the image (CLIP and SAM once each), the second encodes nothing."""
    model = released.model
    calls = {"clip": 0, "sam": 0}

    def counter(name):
        def hook(module, args, output):
            calls[name] += 1
        return hook

    hooks = [model.model.vision_tower.register_forward_hook(counter("clip")),
             model.sam.image_encoder.register_forward_hook(counter("sam"))]
    try:
        released.clear_image_cache()  # the module-scoped model may have seen this image in another test
        image = read_rgb(IMAGE)
        first = released.segment(image, INSTRUCTION, 4)
        assert calls == {"clip": 1, "sam": 1}
        assert {"clip", "sam_encoder"} <= set(first.timings)
        second = released.segment(image, "What is in this image?", 4)
        assert calls == {"clip": 1, "sam": 1}
        assert "sam_encoder" not in second.timings and "clip" not in second.timings
        other = released.segment(image[:, ::-1].copy(), INSTRUCTION, 4)
        assert calls == {"clip": 2, "sam": 2} and "sam_encoder" in other.timings
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_keeps_sam_decoder_float32(dtype):
    seg = LisaSegmenter.from_pretrained(FIXTURE / "tiny-lisa", vision_tower=FIXTURE / "tiny-clip-vit", dtype=dtype)
    m = seg.model
    assert m.lm_head.weight.dtype == getattr(torch, dtype)
    assert m.sam.image_encoder.patch_embed.proj.weight.dtype == getattr(torch, dtype)
    assert all(p.dtype == torch.float32 for p in m.sam.mask_decoder.parameters())
    assert all(p.dtype == torch.float32 for p in m.sam.prompt_encoder.parameters())
    rotary = m.model.language_model.rotary_emb.inv_freq
    assert rotary.dtype == torch.float32
    result = seg.segment(read_rgb(IMAGE), INSTRUCTION, 24)
    assert result.mask_logits.dtype == np.float32 and np.isfinite(result.mask_logits).all()
    assert result.masks.shape[1:] == (500, 333)


def test_quantisation_without_cuda_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA"):
        LisaSegmenter.from_pretrained(FIXTURE / "tiny-lisa", vision_tower=FIXTURE / "tiny-clip-vit",
                                      load_in_8bit=True)


@pytest.mark.parametrize("flag", ["load_in_8bit", "load_in_4bit"])
def test_tiny_random_honours_quantisation(flag):
    """Not ignored: refused without CUDA, applied to the language model's Linear layers with it."""
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            LisaSegmenter.from_pretrained("tiny-random", **{flag: True})
        return
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    seg = LisaSegmenter.from_pretrained("tiny-random", device="cuda", **{flag: True})
    kind = bnb.nn.Linear8bitLt if flag == "load_in_8bit" else bnb.nn.Linear4bit
    q_proj = seg.model.model.language_model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, kind) and not isinstance(seg.model.lm_head, kind)
    assert seg.segment(np.zeros((64, 64, 3), np.uint8), "what is here?", 4).output_ids


def test_corrupt_shard_names_the_file(tiny_copy):
    shard = tiny_copy / "pytorch_model-00002-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="pytorch_model-00002-of-00002.bin"):
        LisaSegmenter.from_pretrained(tiny_copy, vision_tower=FIXTURE / "tiny-clip-vit")


def test_missing_and_unexpected_keys_are_named(tiny_copy):
    shard = tiny_copy / "pytorch_model-00001-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    dropped = next(k for k in state if k.endswith("mlp.down_proj.weight"))
    del state[dropped]
    torch.save(state, shard)
    with pytest.raises(CheckpointError, match="missing.*down_proj"):
        LisaSegmenter.from_pretrained(tiny_copy, vision_tower=FIXTURE / "tiny-clip-vit")
    state["model.surprise.weight"] = torch.zeros(2)
    torch.save(state, shard)
    with pytest.raises(CheckpointError, match="00001-of-00002.bin: unexpected keys.*model.surprise.weight"):
        LisaSegmenter.from_pretrained(tiny_copy, vision_tower=FIXTURE / "tiny-clip-vit")


def test_unknown_architecture(tiny_copy):
    cfg = json.loads((tiny_copy / "config.json").read_text())
    cfg["architectures"] = ["MysteryForCausalLM"]
    cfg["model_type"] = "mystery"
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="no model family recognises.*MysteryForCausalLM.*key prefixes.*"
                                              "model.visual_model.*known families - .*lisa: LISAForCausalLM"):
        LisaSegmenter.from_pretrained(tiny_copy, vision_tower=FIXTURE / "tiny-clip-vit")
    seg = LisaSegmenter.from_pretrained(tiny_copy, vision_tower=FIXTURE / "tiny-clip-vit", family="lisa")
    assert seg.model.config.family == "lisa" and seg.model.family.name == "lisa"
    with pytest.raises(CheckpointError, match="unknown model family 'lisa9'; known: .*lisa"):
        LisaSegmenter.from_pretrained(tiny_copy, vision_tower=FIXTURE / "tiny-clip-vit", family="lisa9")


def test_missing_vision_tower_is_a_clear_error(tiny_copy, tmp_path):
    with pytest.raises(CheckpointError, match="vision tower"):
        LisaSegmenter.from_pretrained(tiny_copy, vision_tower=tmp_path / "no-such-clip")
    # config.json names openai/clip-vit-large-patch14, which cannot be downloaded here: one clear line.
    with pytest.raises(CheckpointError, match="openai/clip-vit-large-patch14"):
        LisaSegmenter.from_pretrained(tiny_copy)


def test_unknown_hub_id_fails_with_one_line():
    with pytest.raises(CheckpointError, match="cannot download model 'nobody/no-such-lisa'") as info:
        LisaSegmenter.from_pretrained("nobody/no-such-lisa")
    assert "\n" not in str(info.value)


def test_template_follows_checkpoint_name(tiny_copy, tmp_path):
    llama2 = tmp_path / "LISA-13B-llama2-v1"
    tiny_copy.rename(llama2)
    seg = LisaSegmenter.from_pretrained(llama2, vision_tower=FIXTURE / "tiny-clip-vit")
    assert seg.model.config.conv_template == "llava_llama_2"
    seg = LisaSegmenter.from_pretrained(llama2, vision_tower=FIXTURE / "tiny-clip-vit", conv_template="llava_v1")
    assert seg.model.config.conv_template == "llava_v1"
