"""Weight layouts users hand us: our sharded safetensors, and CLIP as the full CLIPModel folder that
`openai/clip-vit-large-patch14` is (text tower, nested vision_config, `text_model.*` keys), built here with tiny
dims - each must load to exactly the model the plain layout gives."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import FIXTURE, read_rgb
from lisa_model import CheckpointError, LisaSegmenter
from lisa_model.checkpoint import SAFE_INDEX, SAFE_WEIGHTS, save_safetensors

RELEASED = FIXTURE / "tiny-lisa"
CLIP = FIXTURE / "tiny-clip-vit"
IMAGE = FIXTURE / "cases" / "case2_333x500" / "image.png"
INSTRUCTION = "Can you segment the dog in this image?"  # 5 [SEG] on this checkpoint: SAM is compared too


@pytest.fixture(scope="module")
def released():
    return LisaSegmenter.from_pretrained(RELEASED, vision_tower=CLIP)


@pytest.fixture(scope="module")
def expected(released):
    return released.segment(read_rgb(IMAGE), INSTRUCTION, 24)


def assert_same(a: LisaSegmenter, b: LisaSegmenter, expected) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    result = b.segment(read_rgb(IMAGE), INSTRUCTION, 24)
    assert result.output_ids == expected.output_ids and len(result.masks) == 5
    np.testing.assert_array_equal(result.mask_logits, expected.mask_logits)


# ----- our sharded safetensors layout ---------------------------------------------------------------------------
def test_sharded_safetensors_write_index_reload(released, expected, tmp_path):
    folder = tmp_path / "ours"
    released.save_pretrained(folder)
    (folder / SAFE_WEIGHTS).unlink()
    state = released.model.state_dict()
    limit = 2_000_000
    save_safetensors(state, folder, max_shard_bytes=limit)

    index = json.loads((folder / SAFE_INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    n = len(shards)
    assert n >= 4 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert sorted(p.name for p in folder.glob("model-*.safetensors")) == shards and not (folder / SAFE_WEIGHTS).exists()
    assert index["weight_map"].keys() == state.keys()
    for name in shards:
        with safe_open(str(folder / name), "pt") as f:
            keys = list(f.keys())
            assert all(index["weight_map"][k] == name for k in keys)
            sizes = [f.get_slice(k).get_shape() for k in keys]
        nbytes = sum(state[k].numel() * state[k].element_size() for k in keys)
        assert nbytes <= limit or len(keys) == 1, (name, nbytes, sizes)  # only a lone oversized tensor exceeds it

    assert_same(released, LisaSegmenter.from_pretrained(folder), expected)

    # an index naming a shard that is gone: one clear error naming it
    (folder / shards[-1]).unlink()
    with pytest.raises(CheckpointError, match=shards[-1]):
        LisaSegmenter.from_pretrained(folder)


# ----- CLIP as a full CLIPModel folder --------------------------------------------------------------------------
# Keys that transformers 4.16 wrote into every nested config of openai/clip-vit-large-patch14's config.json
# (a selection); a loader must ignore them.
LEGACY_CONFIG_KEYS = {"_name_or_path": "", "architectures": None, "add_cross_attention": False,
                      "bad_words_ids": None, "chunk_size_feed_forward": 0, "id2label": {"0": "LABEL_0"},
                      "label2id": {"LABEL_0": 0}, "is_decoder": False, "pruned_heads": {}, "return_dict": True,
                      "torch_dtype": None, "torchscript": False, "transformers_version": "4.16.0.dev0",
                      "use_bfloat16": False}


@pytest.fixture(scope="module")
def clip_model_folder(tmp_path_factory):
    """A CLIPModel folder (text + vision towers, projections, logit scale) whose vision tower holds the
    fixture's tiny CLIP weights, saved by transformers' own CLIPModel.save_pretrained."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    folder = tmp_path_factory.mktemp("clip-vit-large-patch14-like")
    vision = CLIPVisionConfig.from_pretrained(str(CLIP))
    text = CLIPTextConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                          vocab_size=99, max_position_embeddings=16, projection_dim=vision.projection_dim)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                 projection_dim=vision.projection_dim))
    tiny = {k.removeprefix("vision_model."): v for k, v in load_file(CLIP / "model.safetensors").items()}
    missing, unexpected = model.vision_model.load_state_dict(tiny, strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k]
    model.save_pretrained(str(folder))
    # As in the real folder: the legacy keys in each nested config, and the position_ids buffers that
    # transformers 4.16 saved with the weights.
    config = json.loads((folder / "config.json").read_text())
    for part in ("text_config", "vision_config"):
        config[part].update(LEGACY_CONFIG_KEYS)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    weights = load_file(folder / "model.safetensors")
    weights["vision_model.embeddings.position_ids"] = torch.arange(257)[None]
    weights["text_model.embeddings.position_ids"] = torch.arange(16)[None]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "preprocessor_config.json").write_text((CLIP / "preprocessor_config.json").read_text())
    return folder


def test_clip_model_folder_has_the_real_layout(clip_model_folder):
    config = json.loads((clip_model_folder / "config.json").read_text())
    assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    assert config["vision_config"]["hidden_size"] == 32 and "text_config" in config
    with safe_open(str(clip_model_folder / "model.safetensors"), "pt") as f:
        prefixes = {k.split(".")[0] for k in f.keys()}
    assert prefixes == {"text_model", "vision_model", "text_projection", "visual_projection", "logit_scale"}


def test_released_checkpoint_loads_through_a_clip_model_folder(released, expected, clip_model_folder):
    through_clip_model = LisaSegmenter.from_pretrained(RELEASED, vision_tower=clip_model_folder)
    assert_same(released, through_clip_model, expected)
    assert through_clip_model.model.config.vision_config.hidden_size == 32
