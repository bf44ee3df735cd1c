"""What trains: LoRA on the language model's attention (q_proj / v_proj only, never CLIP's), plus full lm_head,
embed_tokens, SAM's mask decoder and the [SEG] head, and what the model family adds (`Family.trainable_prefixes`:
SAM's prompt encoder for READ / UGround, UGround's layer policy); CLIP, projector and SAM's image encoder stay
frozen."""
from __future__ import annotations

import re

import torch
from peft import LoraConfig, get_peft_model

from lisa_model.modeling.lisa import LisaForSegmentation

from .config import TrainConfig


def lora_target_regex(modules: tuple[str, ...]) -> str:
    """Full-match regex for the LLaMA layers' projections (a bare ["q_proj", "v_proj"] also hits CLIP)."""
    names = "|".join(re.escape(m) for m in modules)
    return rf"model\.language_model\.layers\.\d+\.self_attn\.({names})"


# SAM's IoU head sits in the mask decoder, but its output is in no loss: it never gets a gradient, so the
# reference's optimiser (AdamW, weight decay 0) never changes it. Frozen here, which is the same for one process and
# lets DistributedDataParallel run (it refuses trainable parameters that receive no gradient).
NEVER_IN_THE_LOSS = ("sam.mask_decoder.iou_prediction_head.",)


def trainable_prefixes(cfg: TrainConfig) -> list[str]:
    prefixes = []
    if cfg.train_lm_head:
        prefixes.append("lm_head.")
    if cfg.train_embed_tokens:
        prefixes.append("model.language_model.embed_tokens.")
    if cfg.train_mask_decoder:
        prefixes.append("sam.mask_decoder.")
    if cfg.train_seg_projection:
        prefixes.append("seg_projection.")
    return prefixes


def base_name(name: str) -> str:
    """Parameter name without peft's wrapping ("base_model.model." prefix)."""
    return name.removeprefix("base_model.model.")


def prepare_for_training(model: LisaForSegmentation, cfg: TrainConfig) -> torch.nn.Module:
    """Freeze / wrap the model per `cfg`; returns the module to optimise (a peft model when LoRA is used)."""
    model.train()
    if cfg.gradient_checkpointing:
        model.model.language_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
        model.model.language_model.config.use_cache = False
    if cfg.train_everything:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.lora_r > 0:
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=lora_target_regex(tuple(cfg.lora_target_modules)), bias="none")
        model = get_peft_model(model, lora)
    family, config = unwrap(model).family, unwrap(model).config
    prefixes = tuple(trainable_prefixes(cfg)) + family.trainable_prefixes(config)
    untrained = NEVER_IN_THE_LOSS + family.untrained_prefixes(config)
    for name, p in model.named_parameters():
        if (base_name(name).startswith(prefixes) and not base_name(name).startswith(untrained)) \
                or "lora_" in name:
            p.requires_grad_(True)
    return model


def _without_ddp(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module"):  # DDP / DeepSpeed engines keep the model in .module
        model = model.module
    return model


def unwrap(model: torch.nn.Module) -> LisaForSegmentation:
    """The LisaForSegmentation inside a peft / accelerate / DDP wrapper (LoRA layers still in it)."""
    model = _without_ddp(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def merge_lora(model: torch.nn.Module) -> LisaForSegmentation:
    """Fold LoRA into the base weights and drop the wrapper (for export and inference)."""
    model = _without_ddp(model)
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def trainable_summary(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
