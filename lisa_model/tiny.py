"""A tiny random-weight LISA for tests, demos and benchmarks: builds in seconds, offline.

Its weights are random, so its text and masks mean nothing; it exercises every code path of the real model
(CLIP -> projector -> LLaMA -> [SEG] -> SAM) at a size this CPU runs in well under a second.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig

from .configuration_lisa import PROJECTOR_LINEAR, LisaConfig, SamGeometry
from .modeling.lisa import LisaForSegmentation
from .tokenization import LisaTokenizer, build_tiny_tokenizer

TINY_SAM = SamGeometry(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,))
# A mid-size random config for benchmarks: LLaMA 1024 x 8 layers, SAM ViT-B geometry, CLIP-L/14-like 224 tower.
MID_SAM = SamGeometry(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))


def tiny_config(vocab_size: int, seg_token_id: int, hidden: int = 64, layers: int = 2, heads: int = 4,
                intermediate: int = 172, clip_hidden: int = 32, clip_layers: int = 3, clip_heads: int = 2,
                sam: SamGeometry = TINY_SAM, projector_type: str = PROJECTOR_LINEAR, clip_image_size: int = 224,
                clip_patch_size: int = 14) -> LisaConfig:
    """A LisaConfig of the fixture's shape family (defaults: the reference fixture's tiny dims)."""
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
                       pad_token_id=0, tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=clip_hidden, intermediate_size=clip_hidden * 2,
                              num_hidden_layers=clip_layers, num_attention_heads=clip_heads,
                              image_size=clip_image_size, patch_size=clip_patch_size, projection_dim=clip_hidden, hidden_act="quick_gelu")
    return LisaConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projector_type=projector_type,
                      out_dim=256, sam=sam.to_dict(), seg_token_id=seg_token_id, mm_use_im_start_end=True,
                      conv_template="llava_v1", image_token_index=vocab_size, tie_word_embeddings=False)


def mid_config(vocab_size: int, seg_token_id: int) -> LisaConfig:
    return tiny_config(vocab_size, seg_token_id, hidden=1024, layers=8, heads=16, intermediate=2752,
                       clip_hidden=256, clip_layers=4, clip_heads=4, sam=MID_SAM)


def tiny_tokenizer(cache_dir: str | Path | None = None) -> LisaTokenizer:
    """The offline tiny tokenizer (a small sentencepiece model trained in-process, then cached on disk)."""
    folder = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / f"lisa_tiny_tokenizer-{_builder_key()}"
    if folder.is_dir():
        return LisaTokenizer.from_pretrained(folder)
    # Build beside the cache and rename into place, so concurrent processes never read a half-written folder.
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    tokenizer = build_tiny_tokenizer(staging)
    try:
        staging.rename(folder)
    except OSError:  # another process won the race: its copy is identical (the build is deterministic)
        pass
    return tokenizer


def _builder_key() -> str:
    """A hash of what the tiny tokenizer is built from (the builder's code, its corpus, sentencepiece's version):
    a changed builder gets a cache folder of its own instead of a stale copy."""
    import hashlib
    import inspect

    import sentencepiece

    from . import tokenization

    source = inspect.getsource(tokenization.build_tiny_tokenizer) + inspect.getsource(tokenization._tiny_corpus)
    return hashlib.sha256((source + sentencepiece.__version__).encode()).hexdigest()[:12]


def build_tiny_model(tokenizer: LisaTokenizer, seed: int = 0, config: LisaConfig | None = None,
                     seg_bias: float = 3.0) -> LisaForSegmentation:
    """Random weights from `seed`. `seg_bias` scales the lm_head row of [SEG] so that the random model emits
    [SEG] now and then (as the reference fixture does), which makes demos show masks."""
    torch.manual_seed(seed)
    config = config or tiny_config(tokenizer.vocab_size, tokenizer.seg_token_id)
    model = LisaForSegmentation(config)
    with torch.no_grad():
        model.lm_head.weight[config.seg_token_id] *= -seg_bias
    return model.eval()


def build_tiny_segmenter(seed: int = 0, config_fn=tiny_config):
    """A LisaSegmenter around a tiny random model (what `LisaSegmenter.from_pretrained("tiny-random")` gives)."""
    from .predictor import LisaSegmenter

    tok = tiny_tokenizer()
    model = build_tiny_model(tok, seed, config_fn(tok.vocab_size, tok.seg_token_id))
    return LisaSegmenter(model, tok)
