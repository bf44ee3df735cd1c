"""Export to the released LISA layout: byte-exact on the fixture, and lossless round trips through the released
loading path for the fixture, a tiny random model (CLIP exported beside it) and a LLaVA-1.5 (mlp2x_gelu) model."""
import copy
import filecmp
import functools
import json
import warnings

import numpy as np
import pytest
import torch

from conftest import FIXTURE, read_rgb
from lisa_model import LisaSegmenter
from lisa_model.checkpoint import BIN_INDEX
from lisa_model.export import export_ours, export_released, export_vision_tower
from lisa_model.tiny import build_tiny_segmenter, tiny_config

RELEASED = FIXTURE / "tiny-lisa"
CLIP = FIXTURE / "tiny-clip-vit"
IMAGE = FIXTURE / "cases" / "case2_333x500" / "image.png"
SMALL_IMAGE = FIXTURE / "cases" / "case3_96x128" / "image.png"
INSTRUCTION = "Can you segment the dog in this image?"
# Random tiny models seldom generate [SEG]; one in the prompt makes a mask as well (as in the reference).
SEG_INSTRUCTION = "Can you segment the dog in this image? It is [SEG]."
FIXTURE_SHARD_BYTES = 5_200_000  # the reference's merge script split the fixture's 10.2 MB like this
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@pytest.fixture(scope="module")
def released():
    return LisaSegmenter.from_pretrained(RELEASED, vision_tower=CLIP)


def rounded(seg: LisaSegmenter, dtype: torch.dtype) -> LisaSegmenter:
    """A copy of `seg` whose parameters hold what a released `dtype` checkpoint keeps (then back in their own
    dtype); CLIP is not in the checkpoint (exported apart, in float32) and keeps its values."""
    model = copy.deepcopy(seg.model)
    with torch.no_grad():
        for name, t in model.state_dict().items():  # parameters and persistent buffers (SAM's gaussian matrix)
            if t.is_floating_point() and not name.startswith("model.vision_tower."):
                t.copy_(t.to(dtype))
    return LisaSegmenter(model, seg.tokenizer, seg.clip_preprocessor)


def assert_same_state(a: LisaSegmenter, b: LisaSegmenter):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def assert_same_output(a: LisaSegmenter, b: LisaSegmenter, image_path, instruction=INSTRUCTION, tokens=24):
    image = read_rgb(image_path)
    # parse_special_tokens: a typed [SEG] (SEG_INSTRUCTION) forces a mask, as in the reference
    ra, rb = (s.segment(image, instruction, tokens, parse_special_tokens=True) for s in (a, b))
    assert ra.input_ids == rb.input_ids and ra.output_ids == rb.output_ids and ra.text == rb.text
    assert len(ra.mask_logits) > 0  # the comparison covers SAM and the [SEG] head too
    np.testing.assert_array_equal(ra.mask_logits, rb.mask_logits)
    return ra


def check_shards(folder, dtype: torch.dtype) -> dict:
    """Every shard loads with plain torch.load(weights_only=True); the index lists exactly their keys; no CLIP."""
    index = json.loads((folder / BIN_INDEX).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and files == sorted(p.name for p in folder.glob("pytorch_model-*-of-*.bin"))
    keys, total = {}, 0
    for name in files:
        shard = torch.load(folder / name, map_location="cpu", weights_only=True)
        assert all(type(v) is torch.Tensor and v.dtype == dtype for v in shard.values())
        keys.update({k: name for k in shard})
        total += sum(v.numel() * v.element_size() for v in shard.values())
    assert keys == index["weight_map"] and index["metadata"]["total_size"] == total
    assert not any("vision_tower" in k for k in keys)
    return keys


# ----- (a) the fixture --------------------------------------------------------------------------------------------
def test_fixture_export_is_byte_identical_to_the_reference(released, tmp_path):
    """bf16, same shard limit, same CLIP id: every file the reference's merge script wrote, byte for byte."""
    out = export_released(released, None, tmp_path / "tiny-lisa", max_shard_bytes=FIXTURE_SHARD_BYTES,
                          vision_tower="openai/clip-vit-large-patch14")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in RELEASED.iterdir())
    for path in RELEASED.iterdir():
        assert filecmp.cmp(path, out / path.name, shallow=False), path.name


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_fixture_round_trip_through_released_layout(released, tmp_path, dtype):
    torch_dtype = DTYPES[dtype]
    out = export_released(released, None, tmp_path / "lisa", dtype=torch_dtype, max_shard_bytes=3_000_000)
    ours, theirs = (json.loads((d / "config.json").read_text()) for d in (out, RELEASED))
    assert ours.keys() == theirs.keys()
    must_differ = {"torch_dtype": dtype, "mm_vision_tower": str(CLIP.resolve()), "vision_tower": str(CLIP.resolve())}
    assert {k: v for k, v in ours.items() if ours[k] != theirs[k]} == \
        {k: v for k, v in must_differ.items() if v != theirs[k]}
    keys = check_shards(out, torch_dtype)
    assert keys.keys() == json.loads((RELEASED / BIN_INDEX).read_text())["weight_map"].keys()

    again = LisaSegmenter.from_pretrained(out, vision_tower=CLIP)
    assert again.model.config.projector_type == released.model.config.projector_type
    assert again.model.config.sam_geometry == released.model.config.sam_geometry
    assert_same_state(released, again)  # the fixture's weights are bf16 values: lossless in both dtypes
    assert_same_output(released, again, IMAGE)


def test_reexport_into_the_folder_the_model_was_loaded_from(released, tmp_path):
    """A bf16 load of bf16 shards keeps the tensors memory-mapped on those files; exporting over them must not
    pull the data from under the model (old files are unlinked, not truncated)."""
    out = export_released(released, None, tmp_path / "lisa", max_shard_bytes=3_000_000)
    mapped = LisaSegmenter.from_pretrained(out, vision_tower=CLIP, dtype="bfloat16")
    export_released(mapped, None, out, max_shard_bytes=3_000_000, overwrite=True)  # same file names
    again = LisaSegmenter.from_pretrained(out, vision_tower=CLIP, dtype="bfloat16")
    assert_same_state(mapped, again)
    assert len(list(out.glob("pytorch_model-*.bin"))) == len(set(
        json.loads((out / BIN_INDEX).read_text())["weight_map"].values()))


def test_export_ours_is_save_pretrained(released, tmp_path):
    out = export_ours(released, tmp_path / "ours")
    assert json.loads((out / "config.json").read_text())["model_type"] == "lisa"
    assert_same_state(released, LisaSegmenter.from_pretrained(out))


# ----- (b) a tiny random model, CLIP exported beside it ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return build_tiny_segmenter()


def test_vision_tower_export_is_a_clip_vision_model_folder(tiny, tmp_path):
    from safetensors import safe_open
    from transformers import CLIPVisionModel

    clip_dir = export_vision_tower(tiny, tmp_path / "clip")
    with safe_open(str(clip_dir / "model.safetensors"), "pt") as f:
        assert all(k.startswith("vision_model.") for k in f.keys())  # transformers 4.31's names
    ours, theirs = (json.loads((d / "config.json").read_text()) for d in (clip_dir, CLIP))
    assert ours.keys() == theirs.keys()
    assert json.loads((clip_dir / "preprocessor_config.json").read_text()).keys() == \
        json.loads((CLIP / "preprocessor_config.json").read_text()).keys()
    clip = CLIPVisionModel.from_pretrained(str(clip_dir))
    expected = tiny.model.model.vision_tower.state_dict()
    assert clip.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in clip.state_dict().items())


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_tiny_random_round_trip(tiny, tmp_path, dtype):
    torch_dtype = DTYPES[dtype]
    clip_dir = export_vision_tower(tiny, tmp_path / "clip")
    out = export_released(tiny, None, tmp_path / "lisa", dtype=torch_dtype, vision_tower=clip_dir,
                          max_shard_bytes=2_000_000)
    check_shards(out, torch_dtype)
    assert json.loads((out / "config.json").read_text())["vision_tower"] == str(clip_dir.resolve())
    again = LisaSegmenter.from_pretrained(out)  # the vision tower comes from config.json
    expected = rounded(tiny, torch_dtype) if torch_dtype != torch.float32 else tiny
    assert_same_state(expected, again)
    assert_same_output(expected, again, SMALL_IMAGE, SEG_INSTRUCTION, tokens=8)


def test_clip_saved_by_current_transformers_loads_too(tiny, tmp_path):
    """A CLIPVisionModel folder written by transformers 5.23 itself (keys without `vision_model.`) also works."""
    tiny.model.model.vision_tower.save_pretrained(tmp_path / "clip")
    out = export_released(tiny, None, tmp_path / "lisa", dtype=torch.float32, vision_tower=tmp_path / "clip")
    assert (out / "pytorch_model.bin").is_file() and not (out / BIN_INDEX).exists()  # one shard, no index
    assert_same_state(tiny, LisaSegmenter.from_pretrained(out))


def test_inv_freq_is_optional(tiny, tmp_path):
    clip_dir = export_vision_tower(tiny, tmp_path / "clip")
    out = export_released(tiny, None, tmp_path / "lisa", dtype=torch.float32, vision_tower=clip_dir,
                          include_inv_freq=False)
    keys = torch.load(out / "pytorch_model.bin", weights_only=True).keys()
    assert not any("inv_freq" in k for k in keys)
    assert_same_state(tiny, LisaSegmenter.from_pretrained(out))


def test_export_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match="vision_tower="):
        export_released(tiny, None, tmp_path / "a")  # a random model does not know where its CLIP came from
    with pytest.raises(ValueError, match="tokenizer"):
        export_released(tiny.model, None, tmp_path / "a", vision_tower="openai/clip-vit-large-patch14")
    out = export_released(tiny, None, tmp_path / "b", vision_tower="openai/clip-vit-large-patch14")
    with pytest.raises(FileExistsError):
        export_released(tiny, None, out, vision_tower="openai/clip-vit-large-patch14")
    export_released(tiny.model, tiny.tokenizer, out, vision_tower="openai/clip-vit-large-patch14", overwrite=True)
    with pytest.warns(UserWarning, match="build_vision_tower"):
        export_released(tiny, None, tmp_path / "c", vision_tower="my-tower")


def test_a_lisa_model_of_our_own_can_show_clip_the_whole_frame(tmp_path):
    """family option pad_clip_image: CLIP gets the frame padded to its square instead of LISA's centre crop, so
    what stands in a 4:3 frame's outer eighths reaches the language model too; it survives our layout, and the
    released layout (whose reference always crops) refuses it."""
    seg = build_tiny_segmenter()
    frame = np.full((120, 160, 3), 128, np.uint8)
    frame[:, :12] = (255, 0, 0)  # a red strip inside the left eighth, outside the centre square
    side = seg.model.config.vision_config.image_size

    def red_share(pixels: torch.Tensor) -> float:  # share of CLIP's input that is clearly red (normalised)
        return float(((pixels[0, 0] > 1.5) & (pixels[0, 1] < -1.0)).float().mean())

    cropped, valid, _ = seg.clip_input(frame)
    assert valid is None and red_share(cropped) == 0.0
    seg.model.family.configure_training(seg.model, {"pad_clip_image": True})
    padded, valid, patch_mask = seg.clip_input(frame)
    assert padded.shape == cropped.shape and valid == (round(side * 120 / 160), side) and patch_mask is None
    assert red_share(padded) > 0.03
    seg.save_pretrained(tmp_path / "ours")
    again = LisaSegmenter.from_pretrained(tmp_path / "ours")
    assert torch.equal(again.clip_input(frame)[0], padded)
    with pytest.raises(ValueError, match="padded to a square"):
        export_released(seg, None, tmp_path / "lisa", vision_tower="openai/clip-vit-large-patch14")
    with pytest.raises(ValueError, match="pad_clip_image"):
        seg.model.family.configure_training(seg.model, {"mode": 1})


def test_llama2_template_is_not_recorded_so_export_warns(tiny, tmp_path):
    seg = LisaSegmenter(copy.deepcopy(tiny.model), tiny.tokenizer)
    seg.model.config.conv_template = "llava_llama_2"
    with pytest.warns(UserWarning, match="conv_template='llava_llama_2'"):
        export_released(seg, None, tmp_path / "lisa", vision_tower="openai/clip-vit-large-patch14")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_released(seg, None, tmp_path / "LISA-13B-llama2-tiny", vision_tower="openai/clip-vit-large-patch14")


# ----- (c) LLaVA-1.5 projector -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_llava15_projector_round_trip(tmp_path, dtype):
    torch_dtype = DTYPES[dtype]
    seg = build_tiny_segmenter(seed=1, config_fn=functools.partial(tiny_config, projector_type="mlp2x_gelu"))
    clip_dir = export_vision_tower(seg, tmp_path / "clip")
    out = export_released(seg, None, tmp_path / "lisa", dtype=torch_dtype, vision_tower=clip_dir,
                          max_shard_bytes=2_000_000)
    config = json.loads((out / "config.json").read_text())
    assert config["mm_projector_type"] == "mlp2x_gelu"
    keys = check_shards(out, torch_dtype)
    assert sorted(k for k in keys if "mm_projector" in k) == [
        "model.mm_projector.0.bias", "model.mm_projector.0.weight", "model.mm_projector.2.bias",
        "model.mm_projector.2.weight"]
    again = LisaSegmenter.from_pretrained(out)
    assert again.model.config.projector_type == "mlp2x_gelu"
    expected = rounded(seg, torch_dtype) if torch_dtype != torch.float32 else seg
    assert_same_state(expected, again)
    assert_same_output(expected, again, SMALL_IMAGE, SEG_INSTRUCTION, tokens=8)
