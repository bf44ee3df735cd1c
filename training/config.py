"""Training configuration: one dataclass, loaded from one YAML/JSON file, defaults = the reference's recipe."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class TrainConfig:
    # --- model -------------------------------------------------------------------------------------------------
    model: str = "tiny-random"  # folder / hub id of a LISA checkpoint (ours or released), or tiny-random
    # tiny-random only: keyword arguments of lisa_model.tiny.tiny_config (e.g. hidden, layers, clip_image_size;
    # "sam": {SamGeometry fields}) for small-model experiments.
    tiny_config: dict = field(default_factory=dict)
    vision_tower: str | None = None
    family: str | None = None  # model family (lisa_model.families); None: read from the checkpoint (tiny-random: lisa)
    # the family's training options (Family.configure_training), e.g. UGround {mode: 1|2|3, baseline_type: ema|critic}
    family_options: dict = field(default_factory=dict)
    base_model: str | None = None  # base model folder of a bare-state-dict release (GSVA's .bin)
    conv_template: str | None = None
    dtype: str = "bfloat16"  # mixed precision where supported ("float32" on CPU-only runs)
    gradient_checkpointing: bool = True
    attn_implementation: str = "sdpa"  # "eager" reproduces the reference's losses bit for bit
    # --- what trains (reference: LoRA on the LLM's q/v, plus lm_head, embed_tokens, mask decoder, [SEG] head) ----
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    train_lm_head: bool = True
    train_embed_tokens: bool = True
    train_mask_decoder: bool = True
    train_seg_projection: bool = True
    train_everything: bool = False  # research option (random-init experiments): every weight trains, no LoRA
    # --- loss --------------------------------------------------------------------------------------------------
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    # Training-only auxiliary: a linear probe on the pre-[SEG] state that must name the query's kind. It forces
    # the query into that state (needed by random-init models; see docs/learning.md); 0 disables it.
    probe_weight: float = 0.0
    probe_classes: int = 0
    # Training-only: an extra CE on each answer's first token alone ("Sure" / "Sorry": is the thing there?), which
    # is a few per cent of the token-mean CE; 0 disables it (the reference's loss).
    opening_weight: float = 0.0
    opening_start_step: int = 0  # opening_weight applies from this step on (0: from the start)
    # Training-only: a linear probe on every image token's state after the middle layer, max-pooled over the
    # image, must name each of `probe_classes` kinds in view (binary cross-entropy; annotation
    # `visible_kind_indices`). It teaches the image tokens what is in the picture, which the "Sure" / "Sorry"
    # opening needs; 0 disables it.
    presence_weight: float = 0.0
    # Training-only: a linear probe on each answer's opening position (the state that predicts "Sure" / "Sorry",
    # after the middle layer) must name the question's kind, absent things' questions included; the last layers
    # can then look for that kind among the image tokens. 0 disables it.
    opening_probe_weight: float = 0.0
    ce_weight_after: float | None = None  # CE weight after `ce_decay_step` (None: unchanged)
    ce_decay_step: int = 0
    # --- optimisation (reference: AdamW 3e-4, wd 0, betas 0.9/0.95, WarmupDecayLR 100 warm-up, 10x500 steps) ----
    lr: float = 3e-4
    lr_multipliers: dict[str, float] = field(default_factory=dict)  # module-name prefix -> lr factor
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    epochs: int = 10
    steps_per_epoch: int = 500
    batch_size: int = 2
    grad_accumulation_steps: int = 10
    max_grad_norm: float = 1.0
    seed: int = 0
    # --- data --------------------------------------------------------------------------------------------------
    dataset: str = "sem_seg||refer_seg||vqa||reason_seg"
    sample_rates: tuple[float, ...] = (9, 3, 3, 1)
    data_root: str = "data"
    synthetic: dict = field(default_factory=dict)  # options of training.synthetic when dataset == "synthetic"
    answers: tuple[str, ...] = ()  # answer templates of ReasonSeg-format sources; () = the reference's five
    # question templates for sentence queries of ReasonSeg-format sources ("{sent}" is the query, "<image>\n"
    # comes first); () = the reference's two (LONG_QUESTIONS). A robot's user asks bare questions.
    sentence_templates: tuple[str, ...] = ()
    num_workers: int = 0
    # --- bookkeeping -------------------------------------------------------------------------------------------
    output_dir: str = "runs/lisa"
    log_every: int = 10
    eval_every: int = 0  # steps; 0 = at each epoch end
    save_every: int = 0  # steps; 0 = at each epoch end
    val_dataset: str | None = None
    val_samples: int = 50

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @classmethod
    def load(cls, path: str | Path | None, **overrides) -> "TrainConfig":
        """From a .yaml/.yml/.json file (unknown keys are an error), then keyword overrides."""
        data: dict = {}
        if path:
            text = Path(path).read_text()
            if str(path).endswith((".yaml", ".yml")):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        data.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown} in {path}")
        for name in ("lora_target_modules", "betas", "sample_rates", "answers", "sentence_templates"):
            if name in data and isinstance(data[name], list):
                data[name] = tuple(data[name])
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_overrides(items: list[str]) -> dict:
    """Command-line `key=value` overrides: the value is read as JSON when it parses (numbers, lists, quoted
    strings), else taken as a plain string."""
    overrides = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    return overrides
