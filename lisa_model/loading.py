"""Building a LisaForSegmentation from a folder or hub id: the released LISA layout or our own.

Released layout: config.json of LISAForCausalLM + sharded .bin; CLIP comes from `config.vision_tower` or the
caller's `vision_tower`; SAM's geometry is read from tensor shapes. Our layout: config.json of `LisaConfig`
(model_type "lisa") + safetensors holding everything, CLIP included. Bare layout (GSVA): one state dict without
config.json; config and tokenizer come from the base model it was trained from (`load_bare`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import torch
from accelerate import init_empty_weights
from transformers import CLIPVisionConfig, LlamaConfig

from .checkpoint import (CheckpointError, clip_to_ours, released_to_ours, stream_into, tensor_shapes,
                         weight_files)
from .configuration_lisa import PROJECTOR_LINEAR, PROJECTOR_MLP2X_GELU, LisaConfig, SamGeometry
from .families import Family, detect_family, family_named
from .modeling.lisa import LisaForSegmentation
from .modeling.sam import infer_sam_geometry
from .tokenization import LisaTokenizer

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# SAM's prompt encoder and mask decoder stay float32 in every mode (cheap, and bf16 breaks the positional grid).
_FP32_PREFIXES = ("sam.prompt_encoder.", "sam.mask_decoder.")


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def dtype_for(dtype: torch.dtype):
    """Per-parameter dtype rule: SAM's prompt encoder / mask decoder float32, everything else `dtype`."""
    return lambda name: torch.float32 if name.startswith(_FP32_PREFIXES) else dtype


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast parameters only (not buffers: rotary inv_freq must stay exact float32), keeping SAM's decoder fp32."""
    rule = dtype_for(dtype)
    for name, p in model.named_parameters():
        if p.is_floating_point():
            p.data = p.data.to(rule(name))
    return model


def resolve_folder(path_or_id: str | Path, what: str) -> Path:
    """A local folder, or a hub id downloaded to the local cache. Fails with one clear line."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    name = str(path_or_id)
    if path.exists() or not _HUB_ID.match(name):
        raise CheckpointError(f"{what} {name!r} is not a folder{'' if path.exists() else ' (it does not exist)'}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.model", "*.bin", "*.safetensors", "*.txt"]))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth...: all end the same way for a user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot download {what} {name!r} from the Hugging Face Hub: {reason[:200]}") from None


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def guess_conv_template(name: str) -> str:
    """LISA-13B-llama2 checkpoints were trained with the LLaMA-2 chat template, the others with llava_v1."""
    return "llava_llama_2" if re.search(r"llama[-_]?2", name, re.IGNORECASE) else "llava_v1"


def _clip_vision_config(folder: Path) -> CLIPVisionConfig:
    raw = read_config(folder)
    if raw.get("model_type") == "clip":  # a full CLIPModel folder: take its vision part
        raw = raw.get("vision_config", {})
    raw = {k: v for k, v in raw.items() if k not in ("architectures", "transformers_version", "torch_dtype",
                                                      "model_type")}
    return CLIPVisionConfig(**raw)


def released_key_map(family: Family) -> Callable[[str], str | None]:
    """Released key -> our name (None drops it): the family's own rules first, then LISA's."""
    def rename(key: str) -> str | None:
        name = family.rename(key)
        return released_to_ours(key) if name is False else name
    return rename


def released_sam_geometry(shapes: dict[str, torch.Size], family: Family, where: str = "checkpoint") -> SamGeometry:
    """SAM's geometry from a released checkpoint's shapes, read under our names (each family keeps SAM under its
    own prefix); CheckpointError when SAM's weights are missing or malformed."""
    rename = released_key_map(family)
    ours = {name: shape for key, shape in shapes.items() if (name := rename(key)) and name.startswith("sam.")}
    try:
        return infer_sam_geometry(ours, prefix="sam.")
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{where}: no usable SAM in this {family.name} checkpoint ({len(ours)} SAM tensors "
                              f"found): {e.args[0]}") from None


def released_config(raw: dict, shapes: dict[str, torch.Size], clip: CLIPVisionConfig, seg_token_id: int,
                    conv_template: str, vision_tower_name: str, family: Family, where: str = "checkpoint",
                    options: dict | None = None) -> LisaConfig:
    """LisaConfig for a released checkpoint of `family` (its config.json + its tensor shapes); options: the
    family_options (default: what the family reads from the config)."""
    text_keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "hidden_act", "bos_token_id",
                 "eos_token_id", "pad_token_id", "rope_theta")
    values = {k: raw[k] for k in text_keys if raw.get(k) is not None}
    if "model.embed_tokens.weight" in shapes:  # a base model's config counts the rows before tokens were added
        values["vocab_size"] = int(shapes["model.embed_tokens.weight"][0])
    text = LlamaConfig(**values, tie_word_embeddings=False)
    if raw.get("rope_scaling"):
        raise CheckpointError(f"rope_scaling {raw['rope_scaling']} is not supported")
    if "model.mm_projector.weight" in shapes:
        projector = PROJECTOR_LINEAR
    elif "model.mm_projector.0.weight" in shapes:
        projector = PROJECTOR_MLP2X_GELU
    else:
        raise CheckpointError("no multimodal projector (model.mm_projector.*) in the checkpoint")
    sam = released_sam_geometry(shapes, family, where)
    return LisaConfig(
        text_config=text.to_dict(), vision_config=clip.to_dict(), projector_type=projector,
        projector_hidden_act="gelu", out_dim=int(raw.get("out_dim", 256)), sam=sam.to_dict(),
        seg_token_id=seg_token_id, mm_use_im_start_end=bool(raw.get("mm_use_im_start_end", True)),
        vision_feature_layer=int(raw.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="default" if raw.get("mm_vision_select_feature", "patch") == "patch"
        else "full",
        conv_template=conv_template, image_token_index=text.vocab_size, vision_tower_name=vision_tower_name,
        tie_word_embeddings=False, family=family.name,
        family_options=family.config_options(raw, shapes) if options is None else options,
    )


def empty_model(config: LisaConfig) -> LisaForSegmentation:
    """Parameters on the meta device, buffers real (rotary inv_freq etc. computed exactly at construction)."""
    with init_empty_weights(include_buffers=False):
        model = LisaForSegmentation(config)
    return model


def load_released(folder: Path, vision_tower: str | Path | None, seg_token_id: int, conv_template: str,
                  dtype: torch.dtype, device: str, family: str | None = None, family_options: dict | None = None,
                  raw: dict | None = None, files: list[Path] | None = None) -> LisaForSegmentation:
    """A released checkpoint: folder's config.json and weights, or `raw` and `files` given (a bare release).
    family_options: added to what the family reads from the release (e.g. GSVA's lora_alpha)."""
    where = str(folder) if files is None else str(files[0])
    raw = read_config(folder) if raw is None else raw
    files = weight_files(folder) if files is None else files
    stored = tensor_shapes(files)
    chosen = family_named(family) if family else detect_family(raw, stored, where)
    options = {**chosen.config_options(raw, stored), **(family_options or {})}
    meta = {k: torch.empty(s, device="meta") for k, s in stored.items()}
    shapes = {k: t.shape for k, t in chosen.unwrap_state(meta, options, where).items()}
    tower_name = str(vision_tower or raw.get("vision_tower") or raw.get("mm_vision_tower") or "")
    if not tower_name:
        raise CheckpointError(f"{folder / 'config.json'} names no vision tower; pass vision_tower=")
    has_clip = any(k.startswith("model.vision_tower.") for k in shapes)
    clip_folder = None if has_clip and vision_tower is None else resolve_folder(tower_name, "vision tower")
    if clip_folder is None:
        raise CheckpointError("checkpoints that embed CLIP need its config: pass vision_tower=")
    config = released_config(raw, shapes, _clip_vision_config(clip_folder), seg_token_id, conv_template,
                             tower_name, chosen, where, options)
    model = empty_model(config)
    sources = [(weight_files(clip_folder), clip_to_ours),
               (files, released_key_map(chosen), lambda shard: chosen.unwrap_state(shard, options, where))]
    stream_into(model, sources, dtype_for(dtype), device)
    return model


# What a bare release must hold (released key prefixes): it is the whole model, frozen tensors included.
_BARE_PARTS = {"model.embed_tokens.": "embeddings", "model.layers.": "LLaMA layers", "lm_head.": "lm_head",
               "model.mm_projector.": "projector", "model.vision_tower.": "CLIP",
               "model.visual_model.image_encoder.": "SAM image encoder",
               "model.visual_model.prompt_encoder.": "SAM prompt encoder",
               "model.visual_model.mask_decoder.": "SAM mask decoder", "model.text_hidden_fcs.": "[SEG] head"}


def load_bare(weights: Path, base: Path, vision_tower: str | Path | None, conv_template: str | None,
              dtype: torch.dtype, device: str, family: str | None = None, family_options: dict | None = None
              ) -> tuple[LisaForSegmentation, LisaTokenizer]:
    """A checkpoint released as one bare state dict (GSVA): the LLaMA config and tokenizer come from `base`, the
    folder of the base model it was trained from; the family's tokens are added to that tokenizer in the
    release's order; every weight (CLIP and projector included) comes from `weights`."""
    raw = read_config(base)
    stored = tensor_shapes([weights])
    chosen = family_named(family) if family else detect_family(raw, stored, str(weights))
    options = {**chosen.config_options(raw, stored), **(family_options or {})}
    meta = {k: torch.empty(s, device="meta") for k, s in stored.items()}
    keys = chosen.unwrap_state(meta, options, str(weights))
    missing = [what for prefix, what in _BARE_PARTS.items() if not any(k.startswith(prefix) for k in keys)]
    if missing:
        raise CheckpointError(f"{weights}: not a complete {chosen.name} state dict, nothing for {', '.join(missing)} "
                              "(a bare release must hold every tensor, frozen ones included)")
    tokenizer = LisaTokenizer.from_pretrained(base)
    tokenizer.add_tokens(chosen.task_tokens)
    rows = keys["model.embed_tokens.weight"].shape[0] if "model.embed_tokens.weight" in keys else None
    if rows != tokenizer.vocab_size:
        raise CheckpointError(f"{weights}: {rows} embedding rows, but the tokenizer of {base} with {chosen.name}'s "
                              f"tokens {list(chosen.task_tokens)} has {tokenizer.vocab_size}: another base model "
                              "or family?")
    model = load_released(base, vision_tower, tokenizer.seg_token_id, conv_template or guess_conv_template(
        weights.name), dtype, device, chosen.name, family_options, raw=chosen.bare_release_config(raw),
        files=[weights])
    return model.eval(), tokenizer


def load_ours(folder: Path, dtype: torch.dtype, device: str, family: str | None = None,
              family_options: dict | None = None) -> LisaForSegmentation:
    try:
        config = LisaConfig.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{folder / 'config.json'}: not a valid LisaConfig ({e})") from None
    if family:
        config.family = family_named(family).name
    if family_options:
        config.family_options = {**(config.family_options or {}), **family_options}
    model = empty_model(config)
    stream_into(model, [(weight_files(folder), lambda k: k)], dtype_for(dtype), device)
    return model


def load_model(folder: Path, vision_tower: str | Path | None, seg_token_id: int, conv_template: str | None,
               dtype: torch.dtype, device: str, name: str = "", family: str | None = None,
               family_options: dict | None = None) -> LisaForSegmentation:
    """Dispatch on config.json: our layout (model_type "lisa", its family in the config) or a released one (the
    family recognised from the config's architectures and the weights' key names, or `family` when given).

    name: the folder or hub id the user gave, from which the released template is guessed.
    """
    raw = read_config(folder)
    if raw.get("model_type") == LisaConfig.model_type:
        model = load_ours(folder, dtype, device, family, family_options)
        if conv_template:
            model.config.conv_template = conv_template
    else:
        model = load_released(folder, vision_tower, seg_token_id, conv_template or guess_conv_template(
            name or str(folder)), dtype, device, family, family_options)
    return model.eval()
