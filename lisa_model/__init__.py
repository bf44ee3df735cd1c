"""lisa_model: LISA reasoning segmentation on current torch / transformers / segment-anything.

    from lisa_model import LisaSegmenter
    seg = LisaSegmenter.from_pretrained("xinlai/LISA-7B-v1", device="cuda", dtype="bfloat16")
    r = seg.segment(image_rgb_uint8, "where would I put the clothes?")
    r.text, r.masks  # str, bool [N, H, W]

No ROS imports here: lisa_ros builds on this library, never the other way round.
"""
from .checkpoint import CheckpointError
from .configuration_lisa import LisaConfig, SamGeometry
from .interruption import InferenceInterrupted
from .memory import InsufficientMemoryError
from .modeling.lisa import LisaForSegmentation
from .predictor import TINY_RANDOM, LisaSegmenter, SegmentationResult

__all__ = ["CheckpointError", "InferenceInterrupted", "InsufficientMemoryError", "LisaConfig",
           "LisaForSegmentation", "LisaSegmenter", "SamGeometry", "SegmentationResult", "TINY_RANDOM"]
