"""SAM for LISA: built from `segment_anything`'s modules, geometry read from checkpoint tensor shapes.

LISA drives SAM's mask decoder with one sparse prompt - the projected [SEG] embedding - instead of points or
boxes, and keeps only the first (single-mask) output.
"""
from __future__ import annotations

from functools import partial
from typing import Mapping

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from ..configuration_lisa import SamGeometry

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def build_sam(geometry: SamGeometry) -> Sam:
    """A randomly initialised SAM with the given image-encoder geometry (decoder as in every SAM release)."""
    g = geometry
    encoder = ImageEncoderViT(
        depth=g.depth,
        embed_dim=g.embed_dim,
        img_size=g.image_size,
        mlp_ratio=g.mlp_ratio,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=g.num_heads,
        patch_size=g.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=g.global_attn_indexes,
        window_size=g.window_size,
        out_chans=g.prompt_embed_dim,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=g.prompt_embed_dim,
        image_embedding_size=(g.embedding_size, g.embedding_size),
        input_image_size=(g.image_size, g.image_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=g.prompt_embed_dim, mlp_dim=2048, num_heads=8),
        transformer_dim=g.prompt_embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder,
               pixel_mean=list(PIXEL_MEAN), pixel_std=list(PIXEL_STD))


def infer_sam_geometry(shapes: Mapping[str, torch.Size], prefix: str = "") -> SamGeometry:
    """Read SAM's encoder geometry from the shapes of its weights (keys relative to `prefix`).

    patch_embed.proj.weight [E, 3, p, p] gives the width and patch; pos_embed [1, g, g, E] the image size;
    the number of `blocks.N` the depth; rel_pos_h [2s-1, E/heads] the heads and, per block, whether it attends
    globally (s = grid side) or in windows (s = window size); mlp.lin1 [E*r, E] the MLP ratio.
    """
    def shape(name: str) -> torch.Size:
        key = prefix + name
        if key not in shapes:
            raise KeyError(f"SAM weight {key!r} not found: cannot infer SAM geometry")
        return shapes[key]

    embed_dim, _, patch, _ = shape("image_encoder.patch_embed.proj.weight")
    grid = shape("image_encoder.pos_embed")[1]
    block_ids = sorted({int(k[len(prefix + "image_encoder.blocks."):].split(".")[0])
                        for k in shapes if k.startswith(prefix + "image_encoder.blocks.")})
    depth = len(block_ids)
    if block_ids != list(range(depth)) or depth == 0:
        raise ValueError(f"SAM image encoder blocks are not numbered 0..N-1: {block_ids}")
    rel_sides = [(shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")[0] + 1) // 2 for i in range(depth)]
    head_dim = shape("image_encoder.blocks.0.attn.rel_pos_h")[1]
    global_blocks = tuple(i for i, s in enumerate(rel_sides) if s == grid)
    window_sides = {s for s in rel_sides if s != grid}
    if len(window_sides) > 1:
        raise ValueError(f"SAM blocks use several window sizes {sorted(window_sides)}: unsupported geometry")
    window = window_sides.pop() if window_sides else 14
    mlp_hidden = shape("image_encoder.blocks.0.mlp.lin1.weight")[0]
    prompt_dim = shape("image_encoder.neck.0.weight")[0]
    return SamGeometry(
        embed_dim=int(embed_dim), depth=depth, num_heads=int(embed_dim // head_dim),
        global_attn_indexes=global_blocks, image_size=int(grid * patch), patch_size=int(patch),
        window_size=int(window), mlp_ratio=mlp_hidden / embed_dim, prompt_embed_dim=int(prompt_dim),
    )


def decode_masks(sam: Sam, seg_embeddings: torch.Tensor, image_embedding: torch.Tensor,
                 points: tuple[torch.Tensor, torch.Tensor] | None = None,
                 mask_input: torch.Tensor | None = None) -> torch.Tensor:
    """Low-resolution mask logits for each [SEG] embedding.

    seg_embeddings: [n, prompt_dim]; image_embedding: [1, prompt_dim, g, g]. Returns [n, 4g, 4g] float32.
    points: optional (coords [n, k, 2] in SAM's input frame, labels [n, k]): their embeddings (with SAM's padding
    point) come before the [SEG] vector in the sparse prompt. mask_input: optional [n, 1, 4g, 4g] dense prompt
    (otherwise SAM's "no mask" embedding).
    The prompt encoder and mask decoder always run in float32 (SAM's positional grid breaks in bf16, and
    float32 costs ~0.07 s here); the embeddings are cast up on the way in.
    """
    decoder_dtype = sam.mask_decoder.iou_token.weight.dtype
    sparse = seg_embeddings.to(decoder_dtype).unsqueeze(1)  # [n, 1, C]: the [SEG] vector
    pe = sam.prompt_encoder
    if points is not None:
        coords, labels = points
        embedded = pe._embed_points(coords.to(decoder_dtype), labels.to(decoder_dtype), pad=True)
        sparse = torch.cat([embedded, sparse], dim=1)
    if mask_input is not None:
        dense = pe._embed_masks(mask_input.to(decoder_dtype))
    else:
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            sparse.shape[0], -1, pe.image_embedding_size[0], pe.image_embedding_size[1])
    low_res, _iou = sam.mask_decoder(
        image_embeddings=image_embedding.to(decoder_dtype),
        image_pe=pe.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    return low_res[:, 0]


def upscale_masks(low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int],
                  image_size: int) -> torch.Tensor:
    """SAM's postprocess: [n, h, w] low-res logits -> [n, H, W] float32 logits at the original image size.

    Bilinear to the padded square, crop away the padding (input_size = resized image), bilinear to the original.
    """
    x = F.interpolate(low_res.float().unsqueeze(1), (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    x = F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)
    return x[:, 0]
