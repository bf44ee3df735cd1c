"""LisaSegmenter: the public facade. Image + instruction -> text, [SEG] masks, timings.

Like SAM's predictor it caches the image: a second instruction on the same image reuses the CLIP tokens and the
SAM image embedding, so only the language model and the mask decoder run again.
"""
from __future__ import annotations

import gc
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError
from .conversation import build_prompt
from .generation import greedy_generate
from .loading import cast_parameters, load_model, parse_dtype, resolve_folder
from .modeling.lisa import LisaForSegmentation
from .preprocessing import ClipPreprocessor, SamPreprocessor, check_image
from .tokenization import LisaTokenizer

TINY_RANDOM = "tiny-random"
EXPLAIN_SUFFIX = "Please output segmentation mask and explain why."


@dataclass
class SegmentationResult:
    """text: decoded answer; output_ids: generated ids (eos excluded); masks: bool [N, H, W] (one per [SEG], in
    order, at the image's size); mask_logits: float32 [N, H, W]; timings: seconds per stage."""

    text: str
    output_ids: list[int]
    masks: np.ndarray
    mask_logits: np.ndarray
    input_ids: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _ImageFeatures:
    key: str
    clip_tokens: torch.Tensor  # [1, P, H]
    sam_embedding: torch.Tensor  # [1, 256, g, g]
    input_size: tuple[int, int]  # SAM-resized (h, w) before padding
    original_size: tuple[int, int]


class LisaSegmenter:
    def __init__(self, model: LisaForSegmentation, tokenizer: LisaTokenizer,
                 clip_preprocessor: ClipPreprocessor | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.clip_preprocessor = clip_preprocessor or ClipPreprocessor(size=model.config.vision_config.image_size,
                                                                       crop=model.config.vision_config.image_size)
        self.sam_preprocessor = SamPreprocessor(model.sam.image_encoder.img_size)
        self._features: _ImageFeatures | None = None

    # ----- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, vision_tower: str | Path | None = None, device: str = "cpu",
                        dtype: str | torch.dtype = "float32", conv_template: str | None = None,
                        load_in_8bit: bool = False, load_in_4bit: bool = False) -> "LisaSegmenter":
        """Load a released LISA checkpoint, one saved by `save_pretrained`, or "tiny-random" (offline, random
        weights: its masks are meaningless)."""
        torch_dtype = parse_dtype(dtype)
        if load_in_8bit or load_in_4bit:
            from .quantization import check_quantization_available

            check_quantization_available(device)
        if str(path_or_id) == TINY_RANDOM:
            from .tiny import build_tiny_segmenter

            seg = build_tiny_segmenter()
            cast_parameters(seg.model, torch_dtype)
            seg.model.to(device)
            if conv_template:
                seg.model.config.conv_template = conv_template
            return seg
        folder = resolve_folder(path_or_id, "model")
        tokenizer = LisaTokenizer.from_pretrained(folder)
        model = load_model(folder, vision_tower, tokenizer.seg_token_id, conv_template, torch_dtype, device,
                           name=str(path_or_id))
        if model.config.seg_token_id != tokenizer.seg_token_id:
            raise CheckpointError(f"{folder}: config seg_token_id {model.config.seg_token_id} != tokenizer's "
                                  f"[SEG] id {tokenizer.seg_token_id}")
        if load_in_8bit or load_in_4bit:
            from .quantization import quantize_language_model

            quantize_language_model(model, bits=8 if load_in_8bit else 4)
        clip_folder = folder if (folder / "preprocessor_config.json").is_file() else None
        if clip_folder is None and model.config.vision_tower_name:
            candidate = Path(vision_tower or model.config.vision_tower_name)
            clip_folder = candidate if candidate.is_dir() else None
        return cls(model, tokenizer, ClipPreprocessor.from_pretrained(clip_folder))

    def save_pretrained(self, folder: str | Path) -> None:
        """Our layout: config.json + safetensors (CLIP included) + tokenizer + CLIP preprocessor config."""
        from .checkpoint import save_safetensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(str(folder))
        save_safetensors(self.model.state_dict(), folder)
        self.tokenizer.save_pretrained(folder)
        self.clip_preprocessor.save(folder)

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    def release(self) -> None:
        """Drop the model and cached features and give CUDA memory back (lifecycle deactivate/cleanup)."""
        self._features = None
        self.model = None  # type: ignore[assignment]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ----- image cache ------------------------------------------------------------------------------------------
    @staticmethod
    def image_key(image: np.ndarray) -> str:
        return f"{image.shape}:{hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()}"

    @torch.no_grad()
    def set_image(self, image: np.ndarray, timings: dict[str, float] | None = None) -> None:
        """Compute (or reuse) the CLIP tokens and SAM embedding of `image` (HxWx3 uint8 RGB)."""
        image = check_image(image)
        key = self.image_key(image)
        if self._features is not None and self._features.key == key:
            return
        timings = {} if timings is None else timings
        t0 = time.perf_counter()
        clip_pixels = self.clip_preprocessor(image)
        sam_pixels, input_size = self.sam_preprocessor(image)
        t1 = time.perf_counter()
        clip_tokens = self.model.image_tokens(clip_pixels.to(self.device))
        t2 = time.perf_counter()
        sam_embedding = self.model.sam_embedding(sam_pixels.to(self.device))
        t3 = time.perf_counter()
        timings.update(preprocess=t1 - t0, clip=t2 - t1, sam_encoder=t3 - t2)
        self._features = _ImageFeatures(key, clip_tokens, sam_embedding, input_size, image.shape[:2])

    # ----- inference --------------------------------------------------------------------------------------------
    def prompt_ids(self, instruction: str) -> list[int]:
        prompt = build_prompt(instruction, self.model.config.conv_template, self.model.config.mm_use_im_start_end)
        return self.tokenizer.encode_prompt(prompt)

    @torch.no_grad()
    def segment(self, image: np.ndarray, instruction: str, max_new_tokens: int = 32, explain: bool = False,
                use_cache: bool = True) -> SegmentationResult:
        """Answer `instruction` about `image` (HxWx3 uint8 RGB); one mask per generated [SEG]."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("instruction is empty")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if explain and EXPLAIN_SUFFIX not in instruction:
            instruction = f"{instruction.strip()} {EXPLAIN_SUFFIX}"
        timings: dict[str, float] = {}
        self.set_image(image, timings)
        feats = self._features
        model, cfg = self.model, self.model.config
        t0 = time.perf_counter()
        input_ids = self.prompt_ids(instruction)
        ids = torch.tensor([input_ids], device=self.device)
        embeds, _, _ = model.splice_image(ids, feats.clip_tokens)
        prompt_seg = None
        if cfg.seg_token_id in input_ids[1:]:  # the reference also turns [SEG] tokens of the prompt into masks
            positions = model.seg_state_positions(ids)[0]
            prompt_seg = model.language_states(embeds)[0, positions]
        timings["tokenize"] = time.perf_counter() - t0
        gen = greedy_generate(model, embeds, max_new_tokens, self.tokenizer.eos_token_id, cfg.seg_token_id,
                              use_cache=use_cache, prompt_seg_states=prompt_seg)
        timings["prefill"] = gen.prefill_time
        timings["decode_per_token"] = float(np.mean(gen.step_times)) if gen.step_times else 0.0
        timings["decode_total"] = float(np.sum(gen.step_times))
        t1 = time.perf_counter()
        h, w = feats.original_size
        if len(gen.seg_states):
            logits = model.masks_from_states(gen.seg_states, feats.sam_embedding, feats.input_size, (h, w))
            logits_np = logits.float().cpu().numpy()
        else:
            logits_np = np.zeros((0, h, w), np.float32)
        t2 = time.perf_counter()
        text = self.tokenizer.decode(gen.ids)
        masks = logits_np > 0
        timings["mask_decode"] = t2 - t1
        timings["postprocess"] = time.perf_counter() - t2
        return SegmentationResult(text=text, output_ids=gen.ids, masks=masks, mask_logits=logits_np,
                                  input_ids=input_ids, timings=timings)
