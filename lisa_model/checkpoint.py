"""Reading and writing LISA weights: the released layout (LISAForCausalLM, sharded .bin) and our safetensors layout.

Shards are streamed into a model whose parameters start on the meta device, so peak memory stays near the final
model size: each shard is memory-mapped, its tensors are renamed by an explicit key map, cast and assigned, and
the shard is dropped before the next one is opened.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_WEIGHTS = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names the file and the keys involved."""


# Released LISA key -> our module name. Order matters: first match wins. None drops the key.
_RELEASED_TO_OURS: list[tuple[str, str | None]] = [
    (r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$", None),  # bf16-rounded; recomputed exactly instead
    (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
    (r"^model\.mm_projector\.(weight|bias)$", r"model.multi_modal_projector.linear.\1"),  # LLaVA v1
    (r"^model\.mm_projector\.0\.", "model.multi_modal_projector.linear_1."),  # LLaVA-1.5
    (r"^model\.mm_projector\.2\.", "model.multi_modal_projector.linear_2."),
    (r"^model\.vision_tower\.vision_tower\.vision_model\.", "model.vision_tower."),
    (r"^model\.visual_model\.", "sam."),
    (r"^model\.text_hidden_fcs\.0\.", "seg_projection."),
    (r"^lm_head\.", "lm_head."),
]
# A CLIPVisionModel folder (transformers 4.x names) -> our vision tower.
_CLIP_TO_OURS: list[tuple[str, str | None]] = [
    (r"^vision_model\.", "model.vision_tower."),
    (r"^text_model\.|^logit_scale$|^text_projection\.|^visual_projection\.", None),  # a full CLIPModel's extras
    (r"^(embeddings|encoder|pre_layrnorm|post_layernorm)\.", r"model.vision_tower.\1."),  # already new-style
]
_OURS_TO_RELEASED: list[tuple[str, str | None]] = [
    (r"^model\.language_model\.", "model."),
    (r"^model\.multi_modal_projector\.linear\.", "model.mm_projector."),
    (r"^model\.multi_modal_projector\.linear_1\.", "model.mm_projector.0."),
    (r"^model\.multi_modal_projector\.linear_2\.", "model.mm_projector.2."),
    (r"^model\.vision_tower\.", None),  # released checkpoints never carry CLIP
    (r"^sam\.", "model.visual_model."),
    (r"^seg_projection\.", "model.text_hidden_fcs.0."),
    (r"^lm_head\.", "lm_head."),
]


def rename(key: str, rules: list[tuple[str, str | None]]) -> str | None:
    """Apply the first matching rule; None = drop the key. Unmatched keys are returned unchanged."""
    for pattern, repl in rules:
        if re.search(pattern, key):
            return None if repl is None else re.sub(pattern, repl, key, count=1)
    return key


def released_to_ours(key: str) -> str | None:
    return rename(key, _RELEASED_TO_OURS)


def clip_to_ours(key: str) -> str | None:
    return rename(key, _CLIP_TO_OURS)


def ours_to_released(key: str) -> str | None:
    return rename(key, _OURS_TO_RELEASED)


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder, in shard order: safetensors preferred, then .bin; index files honoured."""
    for index_name, single in ((SAFE_INDEX, SAFE_WEIGHTS), (BIN_INDEX, BIN_WEIGHTS)):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{index}: not a valid weight index ({e})") from e
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (folder / f).is_file()]
            if missing:
                raise CheckpointError(f"{index} lists shards that are missing: {missing}")
            return [folder / f for f in files]
        if (folder / single).is_file():
            return [folder / single]
    raise CheckpointError(f"no weights in {folder} (looked for {SAFE_WEIGHTS}, {SAFE_INDEX}, {BIN_WEIGHTS}, {BIN_INDEX})")


def read_shard(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one shard, memory-mapped where the format allows. Pickles load with weights_only=True."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # noqa: BLE001 - any failure here is a corrupt or foreign file
        raise CheckpointError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from e


def iter_shards(files: list[Path]) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    for path in files:
        yield path, read_shard(path)


def tensor_shapes(files: list[Path]) -> dict[str, torch.Size]:
    """Key -> shape over all shards (mmap'd, so no weights are read into memory)."""
    shapes: dict[str, torch.Size] = {}
    for path in files:
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt") as f:
                    shapes.update({k: torch.Size(f.get_slice(k).get_shape()) for k in f.keys()})
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(f"cannot read weights file {path}: {e}") from e
        else:
            shard = read_shard(path)
            shapes.update({k: v.shape for k, v in shard.items()})
            del shard
    return shapes


def stream_into(model: torch.nn.Module, sources: list[tuple],
                dtype_for: Callable[[str], torch.dtype], device: torch.device | str = "cpu") -> None:
    """Assign every tensor of `sources` (files + key map [+ shard transform]) to `model`, which may hold meta
    parameters. A source's optional third element rewrites each whole shard before renaming (e.g. merge_lora).

    Raises CheckpointError naming the file for unexpected keys, and naming the keys still missing at the end.
    """
    expected = dict(model.named_parameters())
    expected.update(dict(model.named_buffers()))
    loaded: set[str] = set()
    for files, key_map, *transform in sources:
        for path, shard in iter_shards(files):
            if transform:
                shard = transform[0](shard)
            batch, unexpected = {}, []
            for key in list(shard):
                name = key_map(key)
                tensor = shard.pop(key)
                if name is None:
                    continue
                if name not in expected:
                    unexpected.append(key)
                    continue
                if tuple(tensor.shape) != tuple(expected[name].shape):
                    raise CheckpointError(f"{path}: {key} has shape {tuple(tensor.shape)}, the model expects "
                                          f"{tuple(expected[name].shape)} for {name}")
                target = dtype_for(name) if tensor.is_floating_point() else tensor.dtype
                batch[name] = tensor.to(device=device, dtype=target)
            if unexpected:
                raise CheckpointError(f"{path}: unexpected keys {unexpected[:20]}"
                                      + (f" and {len(unexpected) - 20} more" if len(unexpected) > 20 else ""))
            model.load_state_dict(batch, strict=False, assign=True)
            loaded.update(batch)
            del shard, batch
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise CheckpointError(f"weights missing from the checkpoint: {shown}")


_LORA = re.compile(r"^(.*)\.lora_([AB])\.([^.]+)\.weight$")


def merge_lora(state: dict[str, torch.Tensor], alpha: float, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Fold peft's unmerged LoRA pairs into their base weights: W + (alpha / r) * B @ A, in float64.

    `X.lora_A.<adapter>.weight` [r, in] and `X.lora_B.<adapter>.weight` [out, r] go with `X.weight` [out, in]
    (peft 0.4 names; newer peft's `X.base_layer.*` is renamed to `X.*`). r is read from A; alpha is not stored
    by peft's state dicts, so the caller names it. Works on meta tensors too (shapes only). Other keys pass."""
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}  # "X" -> {"A": ..., "B": ...}
    adapters: dict[str, set[str]] = {}
    for key, tensor in state.items():
        m = _LORA.match(key)
        if m:
            pairs.setdefault(m.group(1), {})[m.group(2)] = tensor
            adapters.setdefault(m.group(1), set()).add(m.group(3))
        else:
            out[key.replace(".base_layer.", ".")] = tensor
    for prefix, pair in pairs.items():
        if len(adapters[prefix]) != 1 or set(pair) != {"A", "B"}:
            raise CheckpointError(f"{where}: the LoRA of {prefix} is not one lora_A/lora_B pair (found "
                                  f"{sorted(pair)} of adapters {sorted(adapters[prefix])})")
        base, a, b = out.get(prefix + ".weight"), pair["A"], pair["B"]
        if base is None:
            raise CheckpointError(f"{where}: a LoRA pair for {prefix} but no {prefix}.weight to merge it into (the "
                                  "frozen base weights are missing: only the trainable tensors saved?)")
        if a.dim() != 2 or b.dim() != 2 or (b.shape[0], a.shape[1]) != tuple(base.shape) or b.shape[1] != a.shape[0]:
            raise CheckpointError(f"{where}: LoRA shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not fit "
                                  f"{prefix}.weight {tuple(base.shape)}")
        out[prefix + ".weight"] = base.double() + (alpha / a.shape[0]) * (b.double() @ a.double())
    return out


def bare_weight_file(path: Path) -> Path | None:
    """The single weights file of a checkpoint released as a bare state dict (no config.json): `path` itself, or
    the only weights file in folder `path`. None for a folder with a config.json (a regular layout)."""
    if path.is_file():
        return path
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".bin", ".pt", ".pth", ".safetensors"))
    if len(found) > 1:
        raise CheckpointError(f"{path} has no config.json and several weights files ({[p.name for p in found]}); "
                              "name the one to load")
    return found[0] if found else None


def save_safetensors(state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write `state` as model.safetensors, or shards + model.safetensors.index.json past `max_shard_bytes`."""
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v.detach().contiguous().cpu()
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(folder / SAFE_WEIGHTS), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    (folder / SAFE_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
