"""`lisa-train`: LoRA fine-tuning of LISA, one process or many (accelerate / DeepSpeed ZeRO-2 / torchrun).

    lisa-train --config training/configs/reference.yaml                          # one CPU or GPU
    accelerate launch --config_file training/configs/accelerate_zero2.yaml -m training.train --config ...
    torchrun --nproc_per_node 8 -m training.train --config ...                     # DDP; on CPUs too (gloo)

On a machine without CUDA, `accelerate launch --cpu --num_processes N` starts ONE process (accelerate's CPU
launcher needs MPI for more): use torchrun, or `accelerate launch --multi_gpu --num_processes N`, which starts N
processes that join one gloo group here.

A step is one optimiser step (batch_size x grad_accumulation_steps samples per process). Data for step k is a
pure function of (seed, k, rank), so `--resume` continues exactly where a checkpoint left off.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch import nn
from tqdm import tqdm

from lisa_model import TINY_RANDOM, LisaSegmenter

from .collate import Collator
from .config import TrainConfig, parse_overrides
from .data_mix import build_training_data
from .lora import prepare_for_training, trainable_summary, unwrap

CHECKPOINT_DIR = "checkpoint"


def warmup_decay(step: int, warmup: int, total: int) -> float:
    """DeepSpeed's WarmupDecayLR (linear): 0 -> 1 over `warmup` steps, then linearly to 0 at `total`."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def param_groups(model: nn.Module, extra: list[nn.Module], cfg: TrainConfig) -> list[dict]:
    """Trainable parameters grouped by learning rate (cfg.lr_multipliers: name prefix -> factor)."""
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        clean = name.removeprefix("base_model.model.")
        factor = next((f for prefix, f in cfg.lr_multipliers.items() if clean.startswith(prefix)), 1.0)
        groups.setdefault(factor, []).append(p)
    for module in extra:
        groups.setdefault(cfg.lr_multipliers.get("probe", 1.0), []).extend(module.parameters())
    return [{"params": ps, "lr": cfg.lr * f} for f, ps in groups.items()]


def build_segmenter(cfg: TrainConfig) -> LisaSegmenter:
    """The model to train, in float32 (mixed precision comes from accelerate's autocast)."""
    if cfg.model == TINY_RANDOM and cfg.tiny_config:
        from functools import partial

        from lisa_model.configuration_lisa import SamGeometry
        from lisa_model.tiny import build_tiny_segmenter, tiny_config

        kwargs = dict(cfg.tiny_config)
        if "sam" in kwargs:
            kwargs["sam"] = SamGeometry.from_dict(kwargs["sam"])
        return build_tiny_segmenter(seed=cfg.seed, config_fn=partial(tiny_config, **kwargs),
                                    family=cfg.family or "lisa")
    return LisaSegmenter.from_pretrained(cfg.model, vision_tower=cfg.vision_tower, conv_template=cfg.conv_template,
                                         dtype="float32", family=cfg.family, base_model=cfg.base_model)


class Trainer:
    def __init__(self, cfg: TrainConfig, accelerator: Accelerator | None = None, write_run_files: bool = True):
        self.cfg = cfg
        self.accelerator = accelerator or build_accelerator(cfg)
        set_seed(cfg.seed)
        acc = self.accelerator
        self.segmenter = build_segmenter(cfg)
        base = self.segmenter.model
        base.model.language_model.config._attn_implementation = cfg.attn_implementation
        base.family.configure_training(base, cfg.family_options)
        self.train_data, self.val_data = build_training_data(cfg, self.segmenter.tokenizer)
        self.collate = Collator(self.segmenter.tokenizer, base.config.conv_template,
                                self.segmenter.clip_preprocessor, self.segmenter.sam_preprocessor,
                                base.config.mm_use_im_start_end, base.family.train_text_limit(base.config),
                                base.family, clip_input=self.segmenter.clip_input)
        model = prepare_for_training(base, cfg)
        if max(cfg.probe_weight, cfg.presence_weight, cfg.opening_probe_weight) > 0 and cfg.probe_classes <= 0:
            raise ValueError("probe_weight / presence_weight / opening_probe_weight need probe_classes (how many "
                             "kinds the probes name)")
        self.probe = nn.Linear(base.config.text_config.hidden_size, cfg.probe_classes) \
            if cfg.probe_weight > 0 else None
        # created after the probe, so that recipes without it draw the same initial weights as before
        self.presence = nn.Linear(base.config.text_config.hidden_size, cfg.probe_classes) \
            if cfg.presence_weight > 0 else None
        self.opening_probe = nn.Linear(base.config.text_config.hidden_size, cfg.probe_classes) \
            if cfg.opening_probe_weight > 0 else None
        extra = [m for m in (self.probe, self.presence, self.opening_probe) if m is not None]
        optimizer = torch.optim.AdamW(param_groups(model, extra, cfg), lr=cfg.lr, betas=tuple(cfg.betas),
                                      weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_decay(s, cfg.warmup_steps, cfg.total_steps))
        prepared = acc.prepare(model, optimizer, scheduler, *extra)
        self.model, self.optimizer, self.scheduler = prepared[:3]
        heads = iter(prepared[3:])
        self.probe = next(heads) if self.probe is not None else None
        self.presence = next(heads) if self.presence is not None else None
        self.opening_probe = next(heads) if self.opening_probe is not None else None
        self.step = 0
        self.history: list[dict] = []
        self.out = Path(cfg.output_dir)
        self.writer = None
        if acc.is_main_process and write_run_files:  # lisa-export reads a run: it writes nothing into it
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=list))
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"))
        acc.print(f"trainable parameters: {trainable_summary(self.model)}")

    # ----- one optimiser step -----------------------------------------------------------------------------------
    def micro_step(self, micro: int) -> dict[str, float]:
        cfg, acc = self.cfg, self.accelerator
        samples = self.train_data.batch(self.step, micro, acc.process_index, cfg.batch_size)
        batch = self.collate(samples).to(acc.device)
        ce_weight = cfg.ce_weight_after if (cfg.ce_weight_after is not None and self.step >= cfg.ce_decay_step) \
            else cfg.ce_weight
        with acc.accumulate(self.model), acc.autocast():
            out = self.model(clip_pixels=batch.clip_pixels, sam_pixels=batch.sam_pixels, input_ids=batch.input_ids,
                             labels=batch.labels, attention_mask=batch.attention_mask, offset=batch.offset,
                             gt_masks=batch.gt_masks, resize_list=batch.resize_list, ce_weight=ce_weight,
                             bce_weight=cfg.bce_weight, dice_weight=cfg.dice_weight, patch_mask=batch.patch_mask,
                             **({"middle_states": True} if self.presence is not None
                                or self.opening_probe is not None else {}))
            loss = out["loss"]
            logs = {k: float(out[k].detach()) for k in ("loss", "ce_loss", "mask_bce_loss", "mask_dice_loss")}
            logs.update({k: float(v.detach()) for k, v in out["family_losses"].items()})  # e.g. policy_loss
            logs["opening_loss"] = float(out["opening_ce"].detach())  # logged always: does it learn "not here"?
            if cfg.opening_weight > 0 and self.step >= cfg.opening_start_step:
                loss = loss + cfg.opening_weight * out["opening_ce"]
            if self.presence is not None and batch.presence_targets is not None:
                presence_loss = self.presence_loss(out["image_states"], batch.presence_targets)
                loss = loss + cfg.presence_weight * presence_loss
                logs["presence_loss"] = float(presence_loss.detach())
            if self.opening_probe is not None and batch.query_classes is not None:
                asked = self.opening_probe(out["opening_states"].float())
                opening_probe_loss = nn.functional.cross_entropy(asked, batch.query_classes)
                loss = loss + cfg.opening_probe_weight * opening_probe_loss
                logs["opening_probe_loss"] = float(opening_probe_loss.detach())
            if self.probe is not None and batch.probe_targets is not None:
                states = torch.cat(out["seg_states"])
                probe_loss = nn.functional.cross_entropy(self.probe(states.float()), batch.probe_targets)
                loss = loss + cfg.probe_weight * probe_loss
                logs["probe_loss"] = float(probe_loss.detach())
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm:
                acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            if acc.sync_gradients and not acc.optimizer_step_was_skipped:  # once per optimiser step
                self.scheduler.step()
            self.optimizer.zero_grad()
        return logs

    def presence_loss(self, image_states: torch.Tensor, in_view: list[list[int]]) -> torch.Tensor:
        """Binary cross-entropy of the presence probe: image_states [B, P, H]; in_view: per image, the classes in
        view. A class's logit is its highest over the image's tokens (a small thing is in a few of them)."""
        logits = self.presence(image_states.float()).amax(dim=1)  # [B, C]
        targets = torch.zeros_like(logits)
        for i, classes in enumerate(in_view):
            targets[i, classes] = 1.0
        return nn.functional.binary_cross_entropy_with_logits(logits, targets)

    def train(self, max_steps: int | None = None, resume: str | None = None) -> list[dict]:
        cfg, acc = self.cfg, self.accelerator
        if resume:
            self.load_checkpoint(resume)
        last = min(cfg.total_steps, max_steps or cfg.total_steps)
        bar = tqdm(total=last, initial=self.step, disable=not acc.is_local_main_process, desc="train")
        while self.step < last:
            t0 = time.perf_counter()
            logs = [self.micro_step(m) for m in range(cfg.grad_accumulation_steps)]
            row = {k: sum(l[k] for l in logs if k in l) / len(logs) for k in logs[0]}
            row.update(step=self.step + 1, lr=self.scheduler.get_last_lr()[0],
                       samples_per_s=cfg.batch_size * cfg.grad_accumulation_steps * acc.num_processes
                       / (time.perf_counter() - t0))
            self.step += 1
            self.history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", sps=f"{row['samples_per_s']:.1f}")
            if self.writer is not None and (self.step % cfg.log_every == 0 or self.step == last):
                for k, v in row.items():
                    if k != "step":
                        self.writer.add_scalar(f"train/{k}", v, self.step)
            if self._due(cfg.eval_every):
                self.validate()
            if self._due(cfg.save_every):
                self.save_checkpoint()
        bar.close()
        return self.history

    def _due(self, every: int) -> bool:
        every = every or self.cfg.steps_per_epoch
        return self.step % every == 0 or self.step == self.cfg.total_steps

    # ----- validation / checkpoints -----------------------------------------------------------------------------
    def validate(self) -> dict[str, float] | None:
        if self.val_data is None or not self.accelerator.is_main_process:
            return None
        from .evaluate import evaluate_samples

        model = unwrap(self.model)
        model.eval()
        scores = evaluate_samples(self.segmenter_for(model), self.val_data.samples(self.cfg.val_samples),
                                  protocol="teacher_forced")
        model.train()
        if self.writer is not None:
            for k, v in scores.items():
                if isinstance(v, float):
                    self.writer.add_scalar(f"val/{k}", v, self.step)
        self.history.append({"step": self.step, **{f"val_{k}": v for k, v in scores.items()
                                                   if isinstance(v, float)}})
        return scores

    def segmenter_for(self, model) -> LisaSegmenter:
        return LisaSegmenter(model, self.segmenter.tokenizer, self.segmenter.clip_preprocessor)

    def save_checkpoint(self) -> Path:
        path = self.out / CHECKPOINT_DIR
        self.accelerator.save_state(str(path))
        if self.accelerator.is_main_process:
            (path / "trainer_state.json").write_text(json.dumps({"step": self.step, "history": self.history}))
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        self.accelerator.load_state(str(path))
        state = json.loads((path / "trainer_state.json").read_text())
        self.step, self.history = state["step"], state["history"]


MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}


def build_accelerator(cfg: TrainConfig) -> Accelerator:
    """The Accelerator for `cfg`, failing loudly where it would silently do something else.

    * dtype: bfloat16 autocasts on CPU and CUDA alike (on CPUs without AMX / AVX512-BF16 it is slower than float32);
      float16 needs CUDA - accelerate accepts fp16 on a CPU but autocasts nothing, so it is refused here.
    * Without CUDA the accelerator is a CPU one, so processes started by torchrun / `accelerate launch
      --multi_gpu` join one gloo group; a non-CPU accelerator on a GPU-less host would leave each process
      training alone on its own data, unaware of the others.
    * The schedule steps once per optimiser step: accelerate's default steps a prepared scheduler once per
      process, which would run the warm-up and decay N times too fast on N processes (DeepSpeed steps it
      itself, once).
    """
    if cfg.dtype not in MIXED_PRECISION:
        raise ValueError(f"dtype {cfg.dtype!r}: use one of {sorted(MIXED_PRECISION)}")
    cuda = torch.cuda.is_available()
    if cfg.dtype == "float16" and not cuda:
        raise ValueError("dtype float16 trains only on CUDA (fp16 autocast and gradient scaling); on a CPU use "
                         "bfloat16 or float32")
    # train_everything marks weights the training forward never reaches (SAM's image encoder runs without
    # gradients, CLIP's last layer is not selected): DDP must be told to expect them.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.train_everything)
    acc = Accelerator(mixed_precision=MIXED_PRECISION[cfg.dtype], cpu=not cuda, log_with=None,
                      gradient_accumulation_steps=cfg.grad_accumulation_steps, step_scheduler_with_optimizer=False,
                      kwargs_handlers=[ddp])
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if acc.num_processes != launched:
        raise RuntimeError(f"launched as {launched} processes but accelerate set up {acc.num_processes}; each "
                           "would train alone")
    return acc


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lisa-train", description="LoRA fine-tuning of LISA.")
    p.add_argument("--config", help="YAML/JSON training config (training/configs/)")
    p.add_argument("--model")
    p.add_argument("--output-dir")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (of the schedule's total)")
    p.add_argument("--resume", help="checkpoint folder written by a previous run")
    p.add_argument("--set", nargs="*", default=[], help="config overrides key=value (value parsed as JSON)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = {"model": args.model, "output_dir": args.output_dir, **parse_overrides(args.set)}
    cfg = TrainConfig.load(args.config, **overrides)
    trainer = Trainer(cfg)
    trainer.train(max_steps=args.max_steps, resume=args.resume)
    trainer.save_checkpoint()
    if trainer.accelerator.is_main_process:
        from .export import export_trainer

        # The merged model in our layout, ready for lisa-eval / LisaSegmenter.from_pretrained.
        export_trainer(trainer, trainer.out / "export", "ours")
        trainer.accelerator.print(f"model: {trainer.out / 'export' / 'ours'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
