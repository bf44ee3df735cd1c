"""LisaSegmenter: the public facade. Image + instruction -> text, [SEG] masks, timings.

Like SAM's predictor it caches the image: a second instruction on the same image reuses the CLIP tokens and the
SAM image embedding, so only the language model and the mask decoder run again.
"""
from __future__ import annotations

import gc
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .builtin import builtin_folder
from .checkpoint import CheckpointError, bare_weight_file
from .constants import IMAGE_TOKEN_INDEX
from .conversation import build_prompt_with_span
from .generation import greedy_generate
from .interruption import InferenceInterrupted, StopCheck, interrupt_points, stoppable
from .loading import cast_parameters, load_bare, load_model, parse_dtype, resolve_folder
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
    notes: list[str] = field(default_factory=list)  # what went wrong without losing the answer (e.g. decoding)
    labels: list[str] = field(default_factory=list)  # per mask: the phrase it grounds ("" when none is given)
    rejected: list[str] = field(default_factory=list)  # targets the model says are absent (GSVA's [REJ])
    family: str = "lisa"  # the model family that answered (lisa_model.families)


@dataclass
class ImageFeatures:
    """What the model keeps of one image: reused by every question about it."""

    key: str
    clip_tokens: torch.Tensor  # [1, P, H]
    sam_embedding: torch.Tensor  # [1, 256, g, g]
    input_size: tuple[int, int]  # SAM-resized (h, w) before padding
    original_size: tuple[int, int]
    clip_valid_size: tuple[int, int] | None = None  # the image inside CLIP's square, for families that pad
    token_mask: torch.Tensor | None = None  # [1, P] bool: False for image tokens of padding (families that mask)


class LisaSegmenter:
    def __init__(self, model: LisaForSegmentation, tokenizer: LisaTokenizer,
                 clip_preprocessor: ClipPreprocessor | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        model.family.bind(model.config, tokenizer)  # the family's spacing and token ids
        self.clip_preprocessor = clip_preprocessor or ClipPreprocessor(size=model.config.vision_config.image_size,
                                                                       crop=model.config.vision_config.image_size)
        self.sam_preprocessor = SamPreprocessor(model.sam.image_encoder.img_size)
        # LLaVA-1.5 successors (UGround, READ) pad the image to CLIP's square with SAM's recipe instead of cropping
        self.clip_padder = SamPreprocessor(model.config.vision_config.image_size)
        # Two images: the newest camera frame (prefetched while idle) and the one the last question was about.
        self._cache: OrderedDict[str, ImageFeatures] = OrderedDict()
        self.cache_size = 2
        self._stop_points = interrupt_points(model)

    # ----- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, vision_tower: str | Path | None = None, device: str = "cpu",
                        dtype: str | torch.dtype = "float32", conv_template: str | None = None,
                        load_in_8bit: bool = False, load_in_4bit: bool = False, check_memory: bool = True,
                        memory_limit_bytes: int | None = None, family: str | None = None,
                        base_model: str | Path | None = None, family_options: dict | None = None
                        ) -> "LisaSegmenter":
        """Load a released checkpoint of any family (LISA, LISA++, READ, UGround, GSVA, GLaMM: see
        `lisa_model.families`), one saved by `save_pretrained`, a built-in one by name ("lisa-demo", see
        builtin.py), or "tiny-random" (offline, random weights: its masks are meaningless).

        family: the model family, recognised from the checkpoint when None (config + weight names); naming one
        overrides that (and picks the family of "tiny-random").
        base_model: for checkpoints released as a bare state dict (one weights file, no config.json, e.g. GSVA's
        .bin - `path_or_id` is that file or its folder), the folder (or hub id) of the base model they were
        trained from: its config.json and tokenizer are used.
        family_options: settings of the family that the release does not record (e.g. GSVA's {"lora_alpha": 16}).

        check_memory: before reading any weight, estimate what the dtype / quantisation needs and raise
        InsufficientMemoryError when it exceeds `memory_limit_bytes` (default: free RAM, or free VRAM on CUDA)."""
        torch_dtype = parse_dtype(dtype)
        if load_in_8bit or load_in_4bit:
            from .quantization import check_quantization_available

            check_quantization_available(device)
        if str(path_or_id) == TINY_RANDOM:
            from .tiny import build_tiny_segmenter

            seg = build_tiny_segmenter(family=family or "lisa")
            cast_parameters(seg.model, torch_dtype)
            seg.model.to(device)
            _quantize_if_asked(seg.model, load_in_8bit, load_in_4bit)
            if conv_template:
                seg.model.config.conv_template = conv_template
            return seg
        folder = builtin_folder(path_or_id)
        bare = None if folder else bare_weight_file(Path(path_or_id).expanduser())
        if bare is not None and base_model is None:
            raise CheckpointError(f"{path_or_id}: a bare state dict without config.json; pass base_model= the "
                                  "folder of the base model it was trained from (its config.json and tokenizer; "
                                  "GSVA: the LLaVA folder given as --mllm_model_path)")
        base = resolve_folder(base_model, "base model") if bare is not None else None
        folder = bare.parent if bare is not None else folder or resolve_folder(path_or_id, "model")
        if check_memory:
            from .memory import check_fits, estimate_bare, estimate_checkpoint

            bits = 8 if load_in_8bit else 4 if load_in_4bit else None
            est = estimate_bare(bare, base) if bare is not None else estimate_checkpoint(folder, vision_tower)
            check_fits(est, torch_dtype, bits, device, str(path_or_id), memory_limit_bytes)
        if bare is not None:
            model, tokenizer = load_bare(bare, base, vision_tower, conv_template, torch_dtype, device, family,
                                         family_options)
        else:
            tokenizer = LisaTokenizer.from_pretrained(folder)
            model = load_model(folder, vision_tower, tokenizer.seg_token_id, conv_template, torch_dtype, device,
                               name=str(path_or_id), family=family, family_options=family_options)
        if model.config.seg_token_id != tokenizer.seg_token_id:
            raise CheckpointError(f"{folder}: config seg_token_id {model.config.seg_token_id} != tokenizer's "
                                  f"[SEG] id {tokenizer.seg_token_id}")
        _quantize_if_asked(model, load_in_8bit, load_in_4bit)
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
        """Drop the model and cached features and give the memory back: CUDA cache, and freed heap to the OS
        (lifecycle deactivate/cleanup)."""
        self._cache.clear()
        self._stop_points = []
        self.model = None  # type: ignore[assignment]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _return_freed_heap()

    # ----- image cache ------------------------------------------------------------------------------------------
    @staticmethod
    def image_key(image: np.ndarray) -> str:
        return f"{image.shape}:{hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()}"

    def is_cached(self, image: np.ndarray) -> bool:
        """True when `image`'s CLIP tokens and SAM embedding are already computed (a question costs no encoding)."""
        return self.image_key(np.ascontiguousarray(image)) in self._cache

    def clear_image_cache(self) -> None:
        self._cache.clear()

    @property
    def _features(self) -> ImageFeatures | None:
        """The most recently used image's features (None when nothing is cached)."""
        return next(reversed(self._cache.values()), None)

    @torch.no_grad()
    def set_image(self, image: np.ndarray, timings: dict[str, float] | None = None,
                  should_stop: StopCheck | None = None) -> ImageFeatures:
        """Compute (or reuse) the CLIP tokens and SAM embedding of `image` (HxWx3 uint8 RGB).
        should_stop: checked before every encoder layer; a reason raises InferenceInterrupted (nothing cached)."""
        with stoppable(self._stop_points, should_stop):
            return self._encode(image, timings)

    def _encode(self, image: np.ndarray, timings: dict[str, float] | None = None) -> ImageFeatures:
        image = check_image(image)
        self.sam_preprocessor.check_size(*image.shape[:2])
        key = self.image_key(image)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        timings = {} if timings is None else timings
        model = self.model
        t0 = time.perf_counter()
        clip_pixels, clip_valid, patch_mask = self.clip_input(image)
        sam_pixels, input_size = self.sam_preprocessor(image)
        t1 = time.perf_counter()
        clip_tokens = model.image_tokens(clip_pixels.to(self.device), patch_mask)
        t2 = time.perf_counter()
        sam_embedding = model.sam_embedding(sam_pixels.to(self.device))
        t3 = time.perf_counter()
        timings.update(preprocess=t1 - t0, clip=t2 - t1, sam_encoder=t3 - t2)
        token_mask = None if patch_mask is None else patch_mask[:, 1:].to(self.device)
        self._cache[key] = ImageFeatures(key, clip_tokens, sam_embedding, input_size, image.shape[:2], clip_valid,
                                         token_mask)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return self._cache[key]

    def clip_input(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int] | None, torch.Tensor | None]:
        """HxWx3 uint8 RGB -> what CLIP gets for the model's family, at inference and in training alike: pixels
        [1, 3, S, S], the image's (h, w) inside the square when the family pads (else None) and the family's patch
        mask [1, 1 + P] bool (None: every patch counts)."""
        family, config = self.model.family, self.model.config
        if family.clip_pads_image(config):
            pixels, valid = self.clip_padder(image)
        else:
            pixels, valid = self.clip_preprocessor(image), None
        return pixels, valid, family.patch_mask(config, valid)

    # ----- inference ------------------------------------------------------------------------------------------
    def prompt_ids(self, instruction: str, parse_special_tokens: bool = False) -> list[int]:
        """The prompt's ids (IMAGE_TOKEN_INDEX where the image goes). parse_special_tokens: see `segment`."""
        cfg = self.model.config
        prompt, span = build_prompt_with_span(instruction, cfg.conv_template, cfg.mm_use_im_start_end,
                                              self.model.family.image_prefix)
        ids = self.tokenizer.encode_prompt(prompt, literal=None if parse_special_tokens else span)
        if ids.count(IMAGE_TOKEN_INDEX) != 1:
            raise ValueError("the instruction contains '<image>', which parse_special_tokens=True turns into a "
                             "second image placeholder; the model takes one image per question")
        return ids

    def check_context(self, input_ids: list[int], max_new_tokens: int, instruction: str = "") -> None:
        """Raise ValueError when prompt + image tokens + max_new_tokens exceed the language model's positions,
        saying how long the instruction may be (the reference would run on past them, untrained)."""
        cfg = self.model.config
        limit = cfg.text_config.max_position_embeddings
        prompt_len = len(input_ids) - 1 + cfg.num_image_tokens
        if prompt_len + max_new_tokens <= limit:
            return
        fixed = len(self.prompt_ids("")) - 1 + cfg.num_image_tokens  # template + image, without the instruction
        room = limit - fixed - max_new_tokens
        used = max(1, prompt_len - fixed)
        chars = f" (about {int(room * len(instruction) / used)} characters like these)" if instruction else ""
        advice = (f"the instruction may be at most {room} tokens{chars} with max_new_tokens={max_new_tokens}"
                  if room > 0 else f"max_new_tokens must be below {limit - fixed}")
        raise ValueError(f"instruction too long for the model's context: {prompt_len} prompt tokens (image "
                         f"included) + max_new_tokens {max_new_tokens} > {limit} positions; {advice}")

    @torch.no_grad()
    def segment(self, image: np.ndarray, instruction: str, max_new_tokens: int = 32, explain: bool = False,
                use_cache: bool = True, parse_special_tokens: bool = False, should_stop: StopCheck | None = None,
                on_progress: Callable[[str, list[int]], None] | None = None,
                max_masks: int | None = None) -> SegmentationResult:
        """Answer `instruction` about `image` (HxWx3 uint8 RGB); one mask per generated [SEG].

        parse_special_tokens: False (default) takes the instruction as plain text - "[SEG]", "</s>", "<image>"
        in it are spelled out, never control tokens, so no caller can forge a mask or end the prompt early. True
        is the reference's behaviour (chat.py): a typed "[SEG]" yields a mask, "</s>" is end-of-sequence.
        should_stop: checked before every model layer; a reason raises InferenceInterrupted carrying the stage,
        the ids and the text generated so far. on_progress(stage, ids): "encoding_image" (only when the image is
        not cached), "generating" after each token, "decoding_masks". max_masks: decode at most this many masks
        (the first ones; a note says how many [SEG] were left without a mask) - each costs a full-size logit map.
        """
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("instruction is empty")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if explain and EXPLAIN_SUFFIX not in instruction:
            instruction = f"{instruction.strip()} {EXPLAIN_SUFFIX}"
        input_ids = self.prompt_ids(instruction, parse_special_tokens)
        self.check_context(input_ids, max_new_tokens, instruction)
        progress = on_progress or (lambda stage, ids: None)
        stage = "encoding_image"
        try:
            with stoppable(self._stop_points, should_stop):
                if not self.is_cached(image):
                    progress(stage, [])
                timings: dict[str, float] = {}
                feats = self._encode(image, timings)
                stage = "generating"
                progress(stage, [])
                return self._answer(feats, input_ids, max_new_tokens, use_cache, timings, progress, max_masks)
        except InferenceInterrupted as e:
            e.stage = e.stage or stage
            e.text = self.decode(e.output_ids)[0]
            raise

    def _answer(self, feats: ImageFeatures, input_ids: list[int], max_new_tokens: int, use_cache: bool,
                timings: dict[str, float], progress, max_masks: int | None = None) -> SegmentationResult:
        model, cfg = self.model, self.model.config
        t0 = time.perf_counter()
        ids = torch.tensor([input_ids], device=self.device)
        embeds, _, mask = model.splice_image(ids, feats.clip_tokens, image_token_mask=feats.token_mask)
        prompt_seg = None
        if cfg.seg_token_id in input_ids[1:]:  # the reference also turns [SEG] tokens of the prompt into masks
            positions = model.seg_state_positions(ids)[0]
            prompt_seg = model.language_states(embeds, mask)[0, positions]
        timings["tokenize"] = time.perf_counter() - t0
        image_at = input_ids.index(IMAGE_TOKEN_INDEX)
        keep = slice(image_at, image_at + feats.clip_tokens.shape[1]) if model.family.needs_image_states else None
        gen = greedy_generate(model, embeds, max_new_tokens, self.tokenizer.eos_token_id, cfg.seg_token_id,
                              use_cache=use_cache, prompt_seg_states=prompt_seg,
                              on_token=lambda so_far: progress("generating", so_far), keep=keep,
                              attention_mask=mask)
        timings["prefill"] = gen.prefill_time
        timings["decode_per_token"] = float(np.mean(gen.step_times)) if gen.step_times else 0.0
        timings["decode_total"] = float(np.sum(gen.step_times))
        t1 = time.perf_counter()
        h, w = feats.original_size
        try:  # the family may recompute the states (GSVA: a second pass with [REJ] read as [SEG])
            seg_states = model.family.answer_mask_states(model, torch.tensor([input_ids + gen.ids], device=self.device),
                                                         feats.clip_tokens, gen.seg_states)
        except InferenceInterrupted as e:
            e.output_ids, e.stage = list(gen.ids), "decoding_masks"
            raise
        notes: list[str] = []
        parts = model.family.read_answer(gen.ids, self.tokenizer)
        labels = [""] * (len(seg_states) - len(parts.labels)) + parts.labels  # [SEG]s of the prompt come first
        if max_masks is not None and len(seg_states) > max_masks:
            notes.append(f"{len(seg_states)} [SEG] tokens; masks decoded for the first {max_masks} only")
            seg_states, labels = seg_states[:max_masks], labels[:max_masks]
        if len(seg_states):
            progress("decoding_masks", gen.ids)
            logits = model.masks_from_states(seg_states, feats.sam_embedding, feats.input_size, (h, w),
                                             gen.kept_states, feats.clip_valid_size)
            logits_np = logits.float().cpu().numpy()
        else:
            logits_np = np.zeros((0, h, w), np.float32)
        t2 = time.perf_counter()
        text, decode_notes = self.decode(gen.ids)
        timings["mask_decode"] = t2 - t1
        timings["postprocess"] = time.perf_counter() - t2
        return SegmentationResult(text=text, output_ids=gen.ids, masks=logits_np > 0, mask_logits=logits_np,
                                  input_ids=input_ids, timings=timings, notes=notes + decode_notes, labels=labels,
                                  rejected=parts.rejected, family=model.family.name)

    def plain_text(self, text: str) -> str:
        """`text` without the family's [SEG] / control tokens, whitespace collapsed (what a robot shows or says)."""
        return self.model.family.plain_text(text)

    def decode(self, ids: list[int]) -> tuple[str, list[str]]:
        """Text of `ids`; ids the tokenizer cannot decode (an lm_head wider than the vocabulary) are dropped
        with a note rather than losing the masks already computed."""
        try:
            return self.tokenizer.decode(ids), []
        except Exception as e:  # noqa: BLE001 - any decoding failure: keep what can be decoded
            known = [i for i in ids if 0 <= i < self.tokenizer.vocab_size]
            dropped = len(ids) - len(known)
            try:
                text = self.tokenizer.decode(known)
            except Exception:  # noqa: BLE001
                text = ""
            return text, [f"text decoding failed ({type(e).__name__}: {e}); {dropped} undecodable id(s) dropped"]

    @torch.no_grad()
    def warm_up(self) -> float:
        """Make the first question cost what later ones cost: read every weight (memory-mapped checkpoints load
        their pages on first use) and run each stage once on a small blank image. Returns seconds."""
        t0 = time.perf_counter()
        for p in self.model.parameters():
            p.detach().sum()
        blank = np.zeros((32, 32, 3), np.uint8)
        feats = self._encode(blank)
        self._answer(feats, self.prompt_ids("warm up"), 2, True, {}, lambda stage, ids: None)
        hidden = self.model.config.text_config.hidden_size
        state = torch.zeros((1, hidden), dtype=self.model.lm_head.weight.dtype, device=self.device)
        image_states = torch.zeros((feats.clip_tokens.shape[1], hidden), dtype=state.dtype, device=self.device)
        self.model.masks_from_states(state, feats.sam_embedding, feats.input_size, feats.original_size,
                                     image_states, feats.clip_valid_size)
        self._cache.pop(feats.key, None)
        return time.perf_counter() - t0


def _quantize_if_asked(model: LisaForSegmentation, load_in_8bit: bool, load_in_4bit: bool) -> None:
    """The language model's Linear layers to bitsandbytes 8-/4-bit (tiny-random too: it exercises the path)."""
    if load_in_8bit or load_in_4bit:
        from .quantization import quantize_language_model

        quantize_language_model(model, bits=8 if load_in_8bit else 4)


def _return_freed_heap() -> None:
    """glibc keeps freed memory in its per-thread arenas; a freed model should go back to the system (another
    process may need it), so ask glibc to trim. A no-op elsewhere."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
