"""Every parameter of lisa_node, declared in this one place with its default and description.

The launch file offers one launch argument per entry here (test/test_launch.py checks they stay in step).
Optional string parameters take `none` for "not set": neither `ros2 launch` (`depth_topic:=` is refused) nor
`--ros-args` (`-p depth_topic:=''` arrives as two quote characters) can pass an empty string.
"""
from __future__ import annotations

from dataclasses import dataclass, fields


NONE_WORDS = ("none", "''", '""')  # what a command line can say for an empty optional string


@dataclass(frozen=True)
class Param:
    default: object
    description: str
    optional: bool = False  # a string that may be empty ("not set"); `none` on a command line says so


PARAMETERS: dict[str, Param] = {
    # --- model -------------------------------------------------------------------------------------------------
    "model": Param("tiny-random", "checkpoint folder or hub id of any family (e.g. xinlai/LISA-7B-v1, "
                                  "rui-qian/hf-UGround-7b_reason_seg_test_llava1.5), 'lisa-demo' (built in) or "
                                  "'tiny-random' (offline random-weight model for wiring tests: meaningless masks)"),
    "family": Param("", "model family override (lisa, read, uground, gsva, glamm); none = recognised from the "
                        "checkpoint", optional=True),
    "vision_tower": Param("", "CLIP vision tower folder or hub id; none = the one named by the checkpoint",
                          optional=True),
    "base_model": Param("", "base model folder of a checkpoint released as a bare state dict (GSVA's .bin: the "
                            "LLaVA it was trained from); none = not such a checkpoint", optional=True),
    "device": Param("cpu", "torch device: cpu, cuda, cuda:1, ..."),
    "dtype": Param("float32", "float32, bfloat16 or float16 (SAM's mask decoder always runs in float32)"),
    "load_in_8bit": Param(False, "quantise the language model to 8 bit (bitsandbytes, CUDA only)"),
    "load_in_4bit": Param(False, "quantise the language model to 4 bit (bitsandbytes, CUDA only)"),
    "conv_template": Param("", "conversation template override: llava_v1 or llava_llama_2; none = from the "
                               "checkpoint", optional=True),
    "max_new_tokens": Param(32, "default generation budget per answer (requests may set their own)"),
    "max_new_tokens_limit": Param(512, "a request's max_new_tokens is capped to this (its message says so)"),
    "max_instruction_chars": Param(2000, "longer instructions are refused before tokenising (the model's context "
                                         "is checked too: prompt + image + max_new_tokens must fit)"),
    "max_inference_seconds": Param(300.0, "wall-clock budget of one inference (s); past it the answer is "
                                          "success=false with the text generated so far (0 = no budget)"),
    "max_masks": Param(32, "masks decoded per answer at most (each [SEG] costs a full-size logit map)"),
    "mask_min_peak_ratio": Param(0.5, "a mask's detached regions whose highest logit is below this share of its "
                                      "largest region's are dropped (stray patches on look-alike objects); 0 = "
                                      "the model's masks as they come (the reference implementation's)"),
    "warmup": Param(True, "after loading, read every weight and run each stage once, so the first request costs "
                          "what later ones do (activation takes one query longer; the time is logged)"),
    "memory_limit_mb": Param(0, "refuse to load a model whose estimated size exceeds this (MiB); 0 = the free "
                                "RAM (CPU) or VRAM (CUDA), -1 = no check"),
    "prefetch": Param(False, "encode the newest colour frame (CLIP + SAM) while idle, so a question about what "
                             "the camera sees now costs what a follow-up does; keeps the device busy (power)"),
    "prefetch_rate": Param(2.0, "Hz: at most this many frames encoded per second by prefetch"),
    "autostart": Param(True, "configure and activate by itself (no lifecycle manager needed)"),
    # --- inputs ------------------------------------------------------------------------------------------------
    "color_topic": Param("/camera/color/image_raw", "colour image topic (sensor_msgs/Image)"),
    "use_compressed": Param(False, "subscribe to <color_topic>/compressed (sensor_msgs/CompressedImage) instead"),
    "depth_topic": Param("/camera/depth/image_raw", "depth image topic (16UC1 in mm or 32FC1 in m); none = no "
                                                    "depth (no 3D targets)", optional=True),
    "camera_info_topic": Param("/camera/color/camera_info", "colour camera intrinsics (sensor_msgs/CameraInfo); "
                                                            "none = not subscribed", optional=True),
    "depth_camera_info_topic": Param("/camera/depth/camera_info",
                                     "depth camera intrinsics; none = depth registered to the colour camera",
                                     optional=True),
    "input_reliability": Param("best_effort", "QoS reliability of the inputs: best_effort (sensor data) or "
                                              "reliable"),
    "sync_tolerance": Param(0.05, "max stamp difference (s) for depth to count as the colour frame's depth"),
    "max_image_pixels": Param(4096 * 4096, "images larger than this (pixels) are refused"),
    # --- requests ----------------------------------------------------------------------------------------------
    "queue_size": Param(2, "requests waiting behind the running one; more are answered success=false 'busy'"),
    "queue_policy": Param("fifo", "fifo: wait in order up to queue_size; reject: refuse any request while busy"),
    "instruction_topic": Param("~/instruction", "standing instruction (std_msgs/String) for continuous mode; an "
                                                "empty string stops it"),
    "continuous_rate": Param(1.0, "Hz at which the standing instruction is answered on new frames (0 = off)"),
    # --- outputs -----------------------------------------------------------------------------------------------
    "publish_mask": Param(True, "publish ~/mask (mono8 union of masks, 255 = target)"),
    "publish_overlay": Param(True, "publish ~/overlay (rgb8: masks over the frame, answer as caption)"),
    "publish_answer": Param(True, "publish ~/answer (std_msgs/String)"),
    "publish_points": Param(True, "publish ~/points (PointCloud2 of each target's 3D points) when depth is there"),
    "publish_markers": Param(True, "publish ~/markers (3D box + label per mask) when depth is there"),
    "depth_min": Param(0.1, "depth below this (m) is invalid"),
    "depth_max": Param(10.0, "depth beyond this (m) is invalid"),
    "diagnostics_period": Param(1.0, "seconds between /diagnostics reports (model, frame rate and age, request "
                                     "counts); 0 = off"),
    "depth_gap": Param(0.10, "3D targets keep the largest cluster of a mask's points along z without a gap wider "
                             "than this (m, or 5 % of the depth): drops mask-edge bleed onto other surfaces"),
    "support_plane_margin": Param(0.01, "3D targets leave out a mask's points within this distance (m) of the "
                                        "frame's floor or table plane (unless they are 70 % of the mask): masks "
                                        "fill the gaps between legs; raise it for noisy depth, 0 = off"),
    "outlier_percentile": Param(2.0, "3D boxes span the [p, 100-p] percentiles of the mask's points (mask edges "
                                     "bleed onto the background)"),
}


@dataclass(frozen=True)
class NodeSettings:
    """The parameters' values as typed attributes (read once per configure)."""

    model: str
    family: str
    vision_tower: str
    base_model: str
    device: str
    dtype: str
    load_in_8bit: bool
    load_in_4bit: bool
    conv_template: str
    max_new_tokens: int
    max_new_tokens_limit: int
    max_instruction_chars: int
    max_inference_seconds: float
    max_masks: int
    mask_min_peak_ratio: float
    warmup: bool
    memory_limit_mb: int
    prefetch: bool
    prefetch_rate: float
    autostart: bool
    color_topic: str
    use_compressed: bool
    depth_topic: str
    camera_info_topic: str
    depth_camera_info_topic: str
    input_reliability: str
    sync_tolerance: float
    max_image_pixels: int
    queue_size: int
    queue_policy: str
    instruction_topic: str
    continuous_rate: float
    publish_mask: bool
    publish_overlay: bool
    publish_answer: bool
    publish_points: bool
    publish_markers: bool
    depth_min: float
    depth_max: float
    diagnostics_period: float
    depth_gap: float
    support_plane_margin: float
    outlier_percentile: float

    def __post_init__(self):
        if self.input_reliability not in ("best_effort", "reliable"):
            raise ValueError(f"input_reliability must be best_effort or reliable, got {self.input_reliability!r}")
        if self.queue_policy not in ("fifo", "reject"):
            raise ValueError(f"queue_policy must be fifo or reject, got {self.queue_policy!r}")
        for name in ("max_new_tokens", "max_new_tokens_limit", "max_instruction_chars", "max_masks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_new_tokens > self.max_new_tokens_limit:
            raise ValueError(f"max_new_tokens {self.max_new_tokens} exceeds max_new_tokens_limit "
                             f"{self.max_new_tokens_limit}")
        if not 0 <= self.mask_min_peak_ratio <= 1:
            raise ValueError(f"mask_min_peak_ratio must be in [0, 1], got {self.mask_min_peak_ratio}")
        if self.support_plane_margin < 0:
            raise ValueError(f"support_plane_margin must be >= 0, got {self.support_plane_margin}")
        if self.max_inference_seconds < 0 or self.prefetch_rate <= 0:
            raise ValueError("max_inference_seconds must be >= 0 and prefetch_rate > 0")


assert set(PARAMETERS) == {f.name for f in fields(NodeSettings)}, "PARAMETERS and NodeSettings disagree"


def declare_all(node) -> None:
    """Declare every parameter on an rclpy node, with its description."""
    from rcl_interfaces.msg import ParameterDescriptor

    for name, p in PARAMETERS.items():
        node.declare_parameter(name, p.default, ParameterDescriptor(description=p.description))


def read_all(node) -> NodeSettings:
    """The parameters' current values; ValueError naming the parameter when one is unusable."""
    values = {}
    for name, p in PARAMETERS.items():
        value = node.get_parameter(name).value
        if p.optional and str(value).strip().lower() in NONE_WORDS:
            value = ""
        values[name] = value
    return NodeSettings(**values)


def default_settings() -> NodeSettings:
    return NodeSettings(**{name: p.default for name, p in PARAMETERS.items()})
