"""Configuration of a LISA model: LLaVA (LLaMA + CLIP + projector) + SAM geometry + the [SEG] head."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import LlavaConfig

# Projector variants of the two LLaVA generations LISA is built on.
PROJECTOR_LINEAR = "linear"  # LLaVA v1: one Linear(vision_hidden -> hidden)
PROJECTOR_MLP2X_GELU = "mlp2x_gelu"  # LLaVA-1.5 (LISA++): Linear-GELU-Linear


@dataclass(frozen=True)
class SamGeometry:
    """Shape of SAM's image encoder (ViT) plus the prompt/mask decoder width.

    Released LISA checkpoints do not describe SAM in config.json (it is always ViT-H there), so the loader reads
    these numbers from tensor shapes instead (see `modeling.sam.infer_sam_geometry`).
    """

    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 16
    global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for 1024 px and patch 16)."""
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["global_attn_indexes"] = list(self.global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SamGeometry":
        d = dict(d)
        d["global_attn_indexes"] = tuple(d.get("global_attn_indexes", ()))
        return cls(**d)


SAM_PRESETS: dict[str, SamGeometry] = {
    "vit_h": SamGeometry(),
    "vit_l": SamGeometry(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_b": SamGeometry(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
}


class LisaConfig(LlavaConfig):
    """A LLaVA config plus what LISA adds.

    `text_config` is the LLaMA, `vision_config` the CLIP vision tower; `vision_feature_layer=-2` and
    `vision_feature_select_strategy="default"` (CLS dropped) are LISA's `mm_vision_select_layer` / `"patch"`.
    """

    model_type = "lisa"

    projector_type: str = PROJECTOR_LINEAR
    out_dim: int = 256  # width of the [SEG] embedding fed to SAM's prompt encoder
    sam: dict | None = None  # SamGeometry.to_dict(); None -> ViT-H
    seg_token_id: int = 32000
    mm_use_im_start_end: bool = True
    conv_template: str = "llava_v1"
    vision_tower_name: str | None = None  # where the CLIP tower came from (hub id or path), for provenance
    family: str = "lisa"  # the model family (lisa_model.families): LISA, or a successor with its own prompts
    family_options: dict | None = None  # what the family reads from its released config (see its module)

    @property
    def sam_geometry(self) -> SamGeometry:
        return SamGeometry.from_dict(self.sam) if self.sam else SamGeometry()

    @property
    def num_image_tokens(self) -> int:
        """Patch tokens the image contributes to the prompt (CLS dropped): 256 for CLIP-L/14 at 224."""
        v = self.vision_config
        return (v.image_size // v.patch_size) ** 2

