"""Will the model fit? An estimate from the checkpoint's index, headers and config, before any tensor is read.

A float32 load of LISA-7B needs ~29 GiB; on a 24 GiB robot computer the kernel would kill the process without a
word. `check_fits` refuses first, naming what is needed, what is free, and the dtypes that would fit.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import BIN_INDEX, CheckpointError, weight_files

GIB = 2**30
# Beyond the weights: the torch runtime, activations and KV cache of one query, the image cache.
RUNTIME_BYTES = GIB // 2
RUNTIME_FRACTION = 0.10
_STORED_DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2, "F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8,
                  "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def format_bytes(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"


class InsufficientMemoryError(RuntimeError):
    """The model would not fit in the memory that is free (or allowed); the message says what would."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Parameter counts of a checkpoint: all of them, and the language model's (the part quantisation shrinks)."""

    total_params: int
    language_params: int

    def bytes_for(self, dtype: torch.dtype, quant_bits: int | None = None) -> int:
        """Resident bytes to run in `dtype` (language model in `quant_bits` when quantised), runtime included."""
        size = torch.empty((), dtype=dtype).element_size()
        language = self.language_params * (quant_bits / 8 if quant_bits else size)
        weights = language + (self.total_params - self.language_params) * size
        return int(weights * (1 + RUNTIME_FRACTION) + RUNTIME_BYTES)


def _safetensors_params(path: Path) -> int:
    """Parameters in one .safetensors file, from its JSON header alone."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(min(n, 100 * 2**20)))
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"cannot read weights file {path}: not a safetensors header ({e})") from e
    total = 0
    for key, entry in header.items():
        if key != "__metadata__":
            count = 1
            for d in entry["shape"]:
                count *= d
            total += count
    return total


def count_file_params(folder: Path, stored_bytes: int = 2) -> int:
    """Parameters in a folder's weight files: safetensors headers, else the .bin index's total_size (or the file
    sizes) divided by the stored element size."""
    files = weight_files(folder)
    if all(f.suffix == ".safetensors" for f in files):
        return sum(_safetensors_params(f) for f in files)
    index = folder / BIN_INDEX
    total = None
    if index.is_file():
        total = json.loads(index.read_text()).get("metadata", {}).get("total_size")
    if total is None:
        total = sum(f.stat().st_size for f in files)
    return int(total) // stored_bytes


def language_params(text_config) -> int:
    """Parameters of the language model a config describes (counted on the meta device: nothing allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(text_config)
    return sum(p.numel() for p in lm.parameters())


def estimate(folder: Path, text_config, vision_folder: Path | None = None) -> MemoryEstimate:
    """The checkpoint in `folder` plus a separate CLIP folder (released LISA checkpoints do not embed CLIP)."""
    raw = json.loads((folder / "config.json").read_text())
    stored = _STORED_DTYPES.get(str(raw.get("torch_dtype")), 2)
    try:
        total = count_file_params(folder, stored)
        if vision_folder is not None and vision_folder.is_dir():
            total += count_file_params(vision_folder, 4)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot size the checkpoint in {folder}: {e}") from e
    return MemoryEstimate(total, min(total, language_params(text_config)))


def free_bytes(device: str) -> int:
    """Memory free for a new model on `device`: free VRAM (CUDA) or available RAM, within a cgroup limit."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # a container's limit (cgroup v2) can be far below the machine's memory
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free


def check_fits(est: MemoryEstimate, dtype: torch.dtype, quant_bits: int | None, device: str, name: str,
               limit_bytes: int | None = None) -> int:
    """Raise InsufficientMemoryError when the estimate exceeds `limit_bytes` (default: free memory on `device`).
    Returns the estimate in bytes."""
    need = est.bytes_for(dtype, quant_bits)
    have = free_bytes(device) if limit_bytes is None else int(limit_bytes)
    if need <= have:
        return need
    options = [(f"{str(d).replace('torch.', '')}", est.bytes_for(d)) for d in (torch.bfloat16, torch.float16)
               if d != dtype or quant_bits]
    if torch.device(device).type == "cuda":
        options += [(f"load_in_{b}bit", est.bytes_for(torch.float16, b)) for b in (8, 4) if b != quant_bits]
    fits = [f"{label} (~{format_bytes(b)})" for label, b in options if b <= have]
    what = f"{str(dtype).replace('torch.', '')}" + (f", language model in {quant_bits} bit" if quant_bits else "")
    source = "the limit set" if limit_bytes is not None else f"free on {device}"
    raise InsufficientMemoryError(
        f"{name} needs about {format_bytes(need)} in {what} ({est.total_params / 1e6:.1f} M parameters) but "
        f"{format_bytes(have)} is {source}; "
        + (f"it would fit as: {', '.join(fits)}" if fits else "no dtype or quantisation here would fit"))


def estimate_checkpoint(folder: Path, vision_tower: str | Path | None = None) -> MemoryEstimate:
    """Estimate for a LISA-style checkpoint folder, our layout (text_config inside) or the released one (LLaMA
    fields at the top level, CLIP in a separate local folder when one is given or named)."""
    raw = json.loads((folder / "config.json").read_text())
    tower = vision_tower or raw.get("vision_tower") or raw.get("mm_vision_tower")
    vision = Path(tower).expanduser() if tower and Path(tower).expanduser().is_dir() else None
    return estimate(folder, _text_config(raw), vision)


def _text_config(raw: dict):
    """The LLaMA config of a checkpoint's config.json: our layout's text_config, or a released one's top level."""
    from transformers import LlamaConfig

    if isinstance(raw.get("text_config"), dict):
        text = raw["text_config"]
    else:
        known = LlamaConfig().to_dict()
        text = {k: v for k, v in raw.items() if k in known and k not in ("architectures", "model_type",
                                                                        "torch_dtype", "transformers_version")}
    return LlamaConfig(**{k: v for k, v in text.items() if k != "model_type"})


def estimate_bare(weights: Path, base_folder: Path) -> MemoryEstimate:
    """A bare state dict (one file, e.g. GSVA's .bin) and the config.json of its base model. Parameters: the
    safetensors header, else the file size at 2 bytes each (an over-estimate where tensors are float32)."""
    try:
        total = _safetensors_params(weights) if weights.suffix == ".safetensors" else weights.stat().st_size // 2
        raw = json.loads((base_folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot size the checkpoint {weights} with base {base_folder}: {e}") from e
    return MemoryEstimate(total, min(total, language_params(_text_config(raw))))
