"""From a request (instruction + frame) to an Answer: the node's bounds, the model call, masks and 3D targets.

`answer_request` is the one place where inference errors become `success=false` + message; the publishers
(outputs.py) only turn a successful Answer into messages. Every request is bounded here whatever its fields say:
instruction length, generation budget, the model's context, a wall-clock budget and cancellation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .frames import Frame
from .geometry import Target3DResult, targets_3d
from .image_conversion import ImageConversionError, color_to_rgb, depth_to_metres

# Feedback stages, in the order a request goes through them (also the action's STAGE_* constants).
WAITING, ENCODING_IMAGE, GENERATING, DECODING_MASKS, COMPUTING_3D = (
    "waiting", "encoding_image", "generating", "decoding_masks", "computing_3d")


@dataclass
class Request:
    """What was asked: by a service call, an action goal or the standing instruction (continuous mode)."""

    instruction: str
    frame: Frame | None
    max_new_tokens: int = 0  # 0: the node's max_new_tokens parameter
    explain: bool = False


@dataclass
class Answer:
    success: bool
    message: str = ""
    instruction: str = ""
    text: str = ""  # on a stopped request: what had been generated before the stop
    header: Any = None  # std_msgs/Header of the frame used
    image: np.ndarray | None = None  # HxWx3 uint8 RGB frame used
    masks: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), bool))  # bool [N, H, W]
    scores: list[float] = field(default_factory=list)  # mean sigmoid probability inside each mask
    areas: list[int] = field(default_factory=list)  # pixels
    targets: list[Target3DResult] = field(default_factory=list)  # one per mask when depth was available
    points: list[np.ndarray] = field(default_factory=list)  # per mask: Nx3 float32 points (m), camera frame
    inference_time: float = 0.0  # s
    generated_tokens: int = 0
    image_encoding_time: float = 0.0  # s of CLIP + SAM encoding; 0 when the image's encoding was reused
    labels: list[str] = field(default_factory=list)  # per mask: the phrase it grounds ("" when none)
    rejected: list[str] = field(default_factory=list)  # targets the model says are absent, with their phrases
    family: str = ""  # the model family that answered
    checkpoint: str = ""  # the node's model parameter

    @classmethod
    def failure(cls, message: str, instruction: str = "", **fields) -> "Answer":
        return cls(success=False, message=message, instruction=instruction, **fields)

    def fill(self, msg) -> None:
        """Fill the fields ReasonSegment.Response, the action's Result and SegmentationResult share."""
        from .image_conversion import mask_to_image
        from .ros_conversions import target_to_msg

        if self.header is not None:
            msg.header = self.header
        msg.text = self.text
        msg.masks = [mask_to_image(m, self.header) for m in self.masks]
        msg.mask_scores = [float(s) for s in self.scores]
        msg.mask_areas = [int(a) for a in self.areas]
        msg.targets = [target_to_msg(t) for t in self.targets]
        msg.inference_time = float(self.inference_time)
        msg.generated_tokens = int(self.generated_tokens)
        msg.image_encoding_time = float(self.image_encoding_time)
        msg.mask_labels = list(self.labels)
        msg.rejected = bool(self.rejected)
        msg.rejected_labels = list(self.rejected)
        msg.model_family = self.family
        msg.model_checkpoint = self.checkpoint

    def fill_response(self, response) -> None:
        response.success = self.success
        response.message = self.message
        self.fill(response)


def token_budget(requested: int, settings) -> tuple[int, str]:
    """(max_new_tokens to use, a note when the request's value was capped). 0 asks for the node's default."""
    tokens = int(requested) or settings.max_new_tokens
    if tokens > settings.max_new_tokens_limit:
        return settings.max_new_tokens_limit, (f"max_new_tokens {tokens} capped to {settings.max_new_tokens_limit} "
                                               f"(parameter max_new_tokens_limit)")
    return tokens, ""


def answer_request(segmenter, settings, req: Request, should_stop: Callable[[], str | None] | None = None,
                   on_progress: Callable[[str, list[int]], None] | None = None) -> Answer:
    """Run the model on the request's frame; every bad input, stop or failure comes back as
    Answer(success=False, message), with the text generated before a stop."""
    from lisa_model import InferenceInterrupted
    from lisa_model.mask_regions import keep_confident_regions

    instruction = req.instruction
    if not instruction or not instruction.strip():
        return Answer.failure("instruction is empty", instruction)
    if len(instruction) > settings.max_instruction_chars:
        return Answer.failure(f"instruction is {len(instruction)} characters; at most {settings.max_instruction_chars}"
                              " are accepted (parameter max_instruction_chars)", instruction[:200])
    if req.frame is None:
        return Answer.failure(f"no frame received yet on {settings.color_topic}", instruction)
    try:
        image = color_to_rgb(req.frame.color, max_pixels=settings.max_image_pixels)
    except ImageConversionError as e:
        return Answer.failure(f"cannot use the image: {e}", instruction)
    tokens, cap_note = token_budget(req.max_new_tokens, settings)
    t0 = time.perf_counter()
    try:
        result = segmenter.segment(image, instruction.strip(), max_new_tokens=tokens, explain=req.explain,
                                   should_stop=should_stop, on_progress=on_progress, max_masks=settings.max_masks)
    except InferenceInterrupted as e:
        return Answer.failure(f"stopped while {e.stage}: {e.reason}", instruction, text=segmenter.plain_text(e.text),
                              header=req.frame.color.header, generated_tokens=len(e.output_ids),
                              inference_time=time.perf_counter() - t0)
    except ValueError as e:  # the library's checks of the caller's input (context, image shape, ...)
        return Answer.failure("; ".join(filter(None, (str(e), cap_note))), instruction)
    except Exception as e:  # noqa: BLE001 - CUDA OOM and friends: report, free, keep serving
        if _is_oom(e):
            _free_cuda()
            return Answer.failure(f"out of memory during inference (cache freed): {e}", instruction)
        return Answer.failure(f"inference failed: {type(e).__name__}: {e}", instruction)
    elapsed = time.perf_counter() - t0  # the model's time; 3D targets are geometry, timed by nobody
    masks = result.masks
    if settings.mask_min_peak_ratio > 0 and len(masks):
        masks = np.stack([keep_confident_regions(logits, settings.mask_min_peak_ratio)
                          for logits in result.mask_logits])
    # Sigmoid only of the pixels inside each mask: the score needs no others (a full-frame exp costs ms per mask).
    scores = [float((1.0 / (1.0 + np.exp(-logits[m]))).mean()) if m.any() else 0.0
              for logits, m in zip(result.mask_logits, masks)]
    encoding = sum(result.timings.get(k, 0.0) for k in ("preprocess", "clip", "sam_encoder"))
    notes = [n for n in (cap_note, *result.notes) if n]
    if len(masks) == 0:
        notes.append("no [SEG] in the answer: text only")
    if result.rejected:
        notes.append(f"{len(result.rejected)} target(s) rejected: not in the image")
    answer = Answer(success=True, instruction=instruction, text=segmenter.plain_text(result.text),
                    header=req.frame.color.header, image=image, masks=masks, scores=scores,
                    areas=[int(m.sum()) for m in masks], generated_tokens=len(result.output_ids),
                    image_encoding_time=encoding, inference_time=elapsed, labels=list(result.labels),
                    rejected=list(result.rejected), family=result.family)
    if on_progress is not None and len(masks) and req.frame.depth is not None:
        on_progress(COMPUTING_3D, result.output_ids)
    try:
        results = _targets(req.frame, masks, settings)
    except (ImageConversionError, ValueError) as e:  # unusable depth: the 2D answer still stands
        notes.append(f"no 3D targets: {e}")
        results = []
    answer.targets = [t for t, _ in results]
    answer.points = [p for _, p in results]
    answer.message = "; ".join(notes)
    return answer


def _targets(frame: Frame, masks: np.ndarray, settings) -> list:
    """(Target3DResult, points) per mask, or [] when the frame has no depth or no colour intrinsics.

    Depth at another resolution than colour is fine: each image keeps its own intrinsics (a depth camera
    without a CameraInfo of its own is taken as registered to colour, its intrinsics scaled to its size).
    """
    from .ros_conversions import intrinsics_from_camera_info

    if frame.depth is None or frame.color_info is None or len(masks) == 0:
        return []
    depth = depth_to_metres(frame.depth)
    color_k = intrinsics_from_camera_info(frame.color_info)
    h, w = masks.shape[1:]
    if (color_k.width, color_k.height) != (w, h):
        color_k = color_k.scaled_to(w, h)
    if frame.depth_info is not None:
        depth_k = intrinsics_from_camera_info(frame.depth_info)
    else:
        depth_k = color_k.scaled_to(depth.shape[1], depth.shape[0])
    return targets_3d(masks, depth, depth_k, color_k, trim_percentile=settings.outlier_percentile,
                      depth_min=settings.depth_min, depth_max=settings.depth_max, depth_gap=settings.depth_gap,
                      support_margin=settings.support_plane_margin)


def _is_oom(e: Exception) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
