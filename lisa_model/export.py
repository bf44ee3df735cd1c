"""Writing a LISA model in the RELEASED layout, the one LISA's own tools (transformers 4.31) read.

    from lisa_model.export import export_released, export_vision_tower
    export_released(segmenter, None, "out/LISA-7B-mine", vision_tower="openai/clip-vit-large-patch14")
    export_vision_tower(segmenter, "out/clip")  # only when the tower is not a hub model

What goes into `out_dir` (the layout of the released checkpoints, as the reference's merge script writes it):
- config.json of `LISAForCausalLM` (model_type "llava"), with exactly the fields of a released config. SAM is not
  described there (the reference always builds ViT-H; our loader reads the geometry back from tensor shapes) and
  neither is `seg_token_idx` (it is the tokenizer's id of "[SEG]"), nor the chat template (our loader guesses it
  from the folder name: "llama2" in the name means llava_llama_2). Its `transformers_version` is "4.31.0", the
  version whose format it follows (`torch_dtype`, persistent `inv_freq`), as in generation_config.json.
- `pytorch_model.bin`, or `pytorch_model-0000K-of-0000N.bin` + `pytorch_model.bin.index.json`: torch.save pickles
  of plain tensors (readable with `torch.load(weights_only=True)`), keys in the released names and in the
  reference's order, CLIP excluded as in every release.
- `model.layers.N.self_attn.rotary_emb.inv_freq` is written too, as transformers 4.31 did (it was a persistent
  buffer then): the key set is then identical to a release's and 4.31 loads it without a "newly initialized"
  warning. Its values are the exact float32 frequencies cast to the export dtype - the same bf16-rounded values a
  release holds. Readers do not depend on it: our loader drops the key and recomputes the frequencies, and the
  reference built its cos/sin cache at construction, before loading, so it would also work without it
  (`include_inv_freq=False` leaves it out).
- tokenizer.model, tokenizer_config.json, special_tokens_map.json, added_tokens.json (slow LlamaTokenizer files),
  generation_config.json.

A LLaVA-1.5 (LISA++) model's projector goes to `model.mm_projector.0/.2` with `"mm_projector_type": "mlp2x_gelu"`
(LLaVA-1.5's config field). The LISA reference code at 3cb2d43 only builds the v1 single-Linear projector, so such
an export is for LISA++-style code and for our loader.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

from .checkpoint import BIN_INDEX, BIN_WEIGHTS, SAFE_INDEX, SAFE_WEIGHTS, ours_to_released
from .configuration_lisa import PROJECTOR_LINEAR, PROJECTOR_MLP2X_GELU
from .families import detect_family
from .loading import guess_conv_template
from .modeling.sam import infer_sam_geometry
from .preprocessing import ClipPreprocessor

__all__ = ["export_released", "export_vision_tower", "export_ours", "released_config_dict", "DEFAULT_MAX_SHARD_BYTES"]

DEFAULT_MAX_SHARD_BYTES = 10 * 10**9  # transformers 4.31's save_pretrained default, "10GB"
_RELEASED_TRANSFORMERS = "4.31.0"
# Tensor order of the reference's state dict: LLaMA body, projector, SAM, [SEG] head, lm_head.
_GROUP_ORDER = [r"^model\.embed_tokens\.", r"^model\.layers\.", r"^model\.norm\.", r"^model\.mm_projector\.",
                r"^model\.visual_model\.", r"^model\.text_hidden_fcs\.", r"^lm_head\."]
_O_PROJ = re.compile(r"^model\.layers\.(\d+)\.self_attn\.o_proj\.weight$")
# The fields of a CLIPVisionModel config.json as transformers 4.31 wrote them (no generic PretrainedConfig extras).
_CLIP_CONFIG_FIELDS = ("attention_dropout", "hidden_act", "hidden_size", "image_size", "initializer_factor",
                       "initializer_range", "intermediate_size", "layer_norm_eps", "num_attention_heads",
                       "num_channels", "num_hidden_layers", "patch_size", "projection_dim")
# Checkpoint files in a folder that a loader could pick up instead of (or besides) the ones we write.
_WEIGHT_PATTERNS = (BIN_WEIGHTS, BIN_INDEX, SAFE_WEIGHTS, SAFE_INDEX, "pytorch_model-*-of-*.bin",
                    "model-*-of-*.safetensors")


def _split(segmenter_or_model, tokenizer):
    """(model, tokenizer, clip_preprocessor) from a LisaSegmenter or a LisaForSegmentation + tokenizer."""
    model = getattr(segmenter_or_model, "model", None)
    if model is not None and hasattr(segmenter_or_model, "tokenizer"):  # a LisaSegmenter
        return model, tokenizer or segmenter_or_model.tokenizer, segmenter_or_model.clip_preprocessor
    model = segmenter_or_model
    if tokenizer is None:
        raise ValueError("export needs the tokenizer: pass a LisaSegmenter, or a model and its LisaTokenizer")
    image_size = model.config.vision_config.image_size
    return model, tokenizer, ClipPreprocessor(size=image_size, crop=image_size)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _resolve_tower(name: str | Path | None, config) -> str:
    name = name if name is not None else config.vision_tower_name
    if not name:
        raise ValueError("the model does not record where its CLIP tower came from (config.vision_tower_name is "
                         "empty): pass vision_tower= (a hub id such as 'openai/clip-vit-large-patch14', or a "
                         "CLIPVisionModel folder, e.g. one written by export_vision_tower)")
    path = Path(name).expanduser()
    if path.is_dir():  # a local folder: record it absolutely, so the checkpoint can be read from anywhere
        name = str(path.resolve())
    name = str(name)
    if not (name.startswith(("openai", "laion")) or "clip" in name):
        warnings.warn(f"vision tower {name!r}: the reference's build_vision_tower only accepts names that start "
                      "with 'openai' or 'laion' or contain 'clip'; LISA's own tools will reject it", stacklevel=3)
    return name


def released_config_dict(model, tokenizer, vision_tower: str, dtype: torch.dtype) -> dict:
    """config.json of a released LISAForCausalLM for `model` (fields and defaults of the reference's configs)."""
    cfg, text, vision = model.config, model.config.text_config, model.config.vision_config
    problems = []
    rope = getattr(text, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    rope_theta = float(rope.get("rope_theta", getattr(text, "rope_theta", 10000.0)))
    if rope_type != "default":
        problems.append(f"rope type {rope_type!r} (the released config has no rope scaling)")
    if getattr(text, "attention_bias", False) or getattr(text, "mlp_bias", False):
        problems.append("LLaMA biases (released LLaMA weights have none)")
    head_dim = getattr(text, "head_dim", None)
    if head_dim is not None and head_dim * text.num_attention_heads != text.hidden_size:
        problems.append(f"head_dim {head_dim} != hidden_size / heads")
    if text.tie_word_embeddings:
        problems.append("tied word embeddings")
    if not isinstance(cfg.vision_feature_layer, int):
        problems.append(f"vision_feature_layer {cfg.vision_feature_layer!r} (one layer only)")
    if cfg.projector_type == PROJECTOR_MLP2X_GELU and cfg.projector_hidden_act != "gelu":
        problems.append(f"projector activation {cfg.projector_hidden_act!r} (mlp2x_gelu means GELU)")
    if cfg.projector_type not in (PROJECTOR_LINEAR, PROJECTOR_MLP2X_GELU):
        problems.append(f"projector_type {cfg.projector_type!r}")
    if tokenizer.seg_token_id != cfg.seg_token_id:
        problems.append(f"tokenizer's [SEG] id {tokenizer.seg_token_id} != config.seg_token_id {cfg.seg_token_id}")
    if tokenizer.vocab_size > text.vocab_size:
        problems.append(f"tokenizer has {tokenizer.vocab_size} tokens, the embedding only {text.vocab_size} rows")
    written_as = detect_family({"architectures": ["LISAForCausalLM"]}, ["model.visual_model.mask_decoder"])
    if written_as.name != model.family.name:  # its prompts, tokens or layout would be lost on the way back
        problems.append(f"model family {model.family.name!r} (this layout loads back as {written_as.name!r}; "
                        "use our layout, save_pretrained)")
    if model.family.clip_pads_image(cfg):  # the reference always centre-crops: the model would see other pixels
        problems.append("CLIP input padded to a square (family option pad_clip_image)")
    if problems:
        raise ValueError("cannot express this model in the released LISA layout: " + "; ".join(problems))
    out = {
        "architectures": ["LISAForCausalLM"],
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "freeze_mm_mlp_adapter": True,
        "hidden_act": text.hidden_act,
        "hidden_size": text.hidden_size,
        "image_aspect_ratio": "square",
        "image_grid_pinpoints": None,
        "initializer_range": text.initializer_range,
        "intermediate_size": text.intermediate_size,
        "max_position_embeddings": text.max_position_embeddings,
        "mm_hidden_size": vision.hidden_size,
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": bool(cfg.mm_use_im_start_end),
        "mm_vision_select_feature": "patch" if cfg.vision_feature_select_strategy == "default" else "cls_patch",
        "mm_vision_select_layer": int(cfg.vision_feature_layer),
        "mm_vision_tower": vision_tower,
        "model_type": "llava",
        "num_attention_heads": text.num_attention_heads,
        "num_hidden_layers": text.num_hidden_layers,
        "num_key_value_heads": text.num_key_value_heads,
        "out_dim": int(cfg.out_dim),
        "pad_token_id": tokenizer.pad_token_id,
        "pretrain_mm_mlp_adapter": None,
        "pretraining_tp": 1,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": _dtype_name(dtype),
        "train_mask_decoder": True,
        "transformers_version": _RELEASED_TRANSFORMERS,
        "tune_mm_mlp_adapter": False,
        "use_cache": False,
        "use_mm_proj": True,
        "vision_tower": vision_tower,
        "vocab_size": text.vocab_size,
    }
    if cfg.projector_type == PROJECTOR_MLP2X_GELU:
        out["mm_projector_type"] = "mlp2x_gelu"
    if rope_theta != 10000.0:  # 4.31 had no rope_theta (always 10000); later LLaVA configs carry it
        out["rope_theta"] = rope_theta
    return dict(sorted(out.items()))


def _released_tensors(model, dtype: torch.dtype, include_inv_freq: bool) -> list[tuple[str, torch.Tensor]]:
    """(released key, tensor) in the reference's order; tensors still in the model's dtype (cast when written)."""
    items: list[tuple[str, torch.Tensor]] = []
    inv_freq = model.model.language_model.rotary_emb.inv_freq.detach().float()
    for key, tensor in model.state_dict().items():
        name = ours_to_released(key)
        if name is None:
            continue
        if name == key and not key.startswith("lm_head."):
            raise ValueError(f"no released name for {key!r}: extend checkpoint._OURS_TO_RELEASED")
        if tensor.is_meta:
            raise ValueError(f"{key} is on the meta device: nothing to export")
        items.append((name, tensor))
        match = _O_PROJ.match(name)
        if include_inv_freq and match:
            items.append((f"model.layers.{match.group(1)}.self_attn.rotary_emb.inv_freq", inv_freq))

    def rank(item):
        for i, pattern in enumerate(_GROUP_ORDER):
            if re.search(pattern, item[0]):
                return i
        raise ValueError(f"unexpected released key {item[0]!r}")
    return sorted(items, key=rank)  # stable: keeps the module order inside each group


def _prepare(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor in `dtype` that owns exactly its data (torch.save writes whole storages)."""
    t = tensor.detach().to("cpu", dtype=dtype if tensor.is_floating_point() else tensor.dtype).contiguous()
    if t.storage_offset() != 0 or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


def _plan_shards(items: list[tuple[str, torch.Tensor]], dtype: torch.dtype, max_shard_bytes: int
                 ) -> tuple[list[list[int]], int]:
    """Indices of `items` per shard (a new shard when the next tensor would pass the limit, as transformers
    4.31 does, never an empty one) and the total byte size."""
    shards: list[list[int]] = [[]]
    size = total = 0
    for i, (_, t) in enumerate(items):
        nbytes = t.numel() * (torch.finfo(dtype).bits // 8 if t.is_floating_point() else t.element_size())
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
        total += nbytes
    return shards, total


def _clear_weights(folder: Path, overwrite: bool) -> None:
    """Unlink (never truncate) old weight files: a model loaded from them may still be memory-mapped onto them,
    which is safe across an unlink but dies with SIGBUS when the same inode is truncated and rewritten."""
    stale = sorted({p for pattern in _WEIGHT_PATTERNS for p in folder.glob(pattern)})
    if stale and not overwrite:
        raise FileExistsError(f"{folder} already holds weights ({', '.join(p.name for p in stale[:5])}); "
                              "pass overwrite=True to replace them")
    for p in stale:
        p.unlink()


def export_released(segmenter_or_model, tokenizer=None, out_dir: str | Path = "", dtype: torch.dtype = torch.bfloat16,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, vision_tower: str | Path | None = None,
                    include_inv_freq: bool = True, overwrite: bool = False) -> Path:
    """Write `segmenter_or_model` in the released LISA layout (see the module doc); returns `out_dir`.

    segmenter_or_model: a LisaSegmenter (its tokenizer is used unless `tokenizer` is given) or a
    LisaForSegmentation with `tokenizer` (a LisaTokenizer). dtype: of every floating tensor (releases are
    bfloat16). max_shard_bytes: shard limit in tensor bytes; one shard is written as pytorch_model.bin without an
    index. vision_tower: the CLIP id/folder config.json names (default: the model's `config.vision_tower_name`;
    a local folder is written as an absolute path). overwrite: replace weight files already in `out_dir`.

    Memory: one shard at a time is cast and written, so the peak is the model plus one shard.
    """
    model, tokenizer, _ = _split(segmenter_or_model, tokenizer)
    if not out_dir:
        raise ValueError("out_dir is required")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tower = _resolve_tower(vision_tower, model.config)
    config = released_config_dict(model, tokenizer, tower, dtype)
    items = _released_tensors(model, dtype, include_inv_freq)
    shapes = {name: t.shape for name, t in items}
    geometry = infer_sam_geometry(shapes, prefix="model.visual_model.")
    if geometry != model.config.sam_geometry:
        raise ValueError(f"SAM geometry {model.config.sam_geometry} cannot be read back from its tensor shapes "
                         f"(they give {geometry}); the released layout has no other place for it")
    if guess_conv_template(out.name) != model.config.conv_template:
        warnings.warn(f"the model's chat template is {model.config.conv_template!r} but the released layout does "
                      f"not record it and {out.name!r} suggests {guess_conv_template(out.name)!r}: load it with "
                      f"conv_template={model.config.conv_template!r}", stacklevel=2)
    _clear_weights(out, overwrite)

    plan, total = _plan_shards(items, dtype, max_shard_bytes)
    names = [BIN_WEIGHTS] if len(plan) == 1 else \
        [f"pytorch_model-{i:05d}-of-{len(plan):05d}.bin" for i in range(1, len(plan) + 1)]
    weight_map = {}
    for file_name, indices in zip(names, plan):
        shard = {items[i][0]: _prepare(items[i][1], dtype) for i in indices}
        torch.save(shard, out / file_name)
        weight_map.update({k: file_name for k in shard})
        del shard
    if len(plan) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / BIN_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = {"_from_model_config": True, "bos_token_id": tokenizer.bos_token_id,
                  "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                  "transformers_version": _RELEASED_TRANSFORMERS, "use_cache": False}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(out)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # 4.31 wrote these with sorted keys
        path = out / name
        if path.is_file():
            path.write_text(json.dumps(json.loads(path.read_text()), indent=2, sort_keys=True) + "\n")
    return out


def export_vision_tower(segmenter_or_model, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the model's CLIP tower as a CLIPVisionModel folder that transformers 4.31 (LISA's tools) and current
    transformers both read: config.json, model.safetensors with 4.31's `vision_model.*` names (5.23's own
    CLIPVisionModel.save_pretrained drops that prefix, which 4.31 cannot load), preprocessor_config.json."""
    model = getattr(segmenter_or_model, "model", segmenter_or_model)
    preprocessor = getattr(segmenter_or_model, "clip_preprocessor", None)
    vision = model.config.vision_config
    if preprocessor is None:
        preprocessor = ClipPreprocessor(size=vision.image_size, crop=vision.image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear_weights(out, overwrite=True)
    state = {f"vision_model.{k}": _prepare(v, dtype)
             for k, v in model.model.vision_tower.state_dict().items()}
    save_file(state, str(out / SAFE_WEIGHTS), metadata={"format": "pt"})
    config = {k: getattr(vision, k) for k in _CLIP_CONFIG_FIELDS}
    config.update(architectures=["CLIPVisionModel"], model_type="clip_vision_model", torch_dtype=_dtype_name(dtype),
                  transformers_version=transformers.__version__)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    preprocessor.save(out)
    return out


def export_ours(segmenter, out_dir: str | Path) -> Path:
    """Our own layout (LisaConfig + safetensors with CLIP + tokenizer + CLIP preprocessor): `save_pretrained`."""
    segmenter.save_pretrained(out_dir)
    return Path(out_dir)
