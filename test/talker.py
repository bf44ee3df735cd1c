"""A tiny random model that never ends its answer, for tests of bounds, stops and cancels.

It emits neither eos nor [SEG], so every request generates exactly max_new_tokens tokens (seconds of CPU work at a
few thousand) and decodes no mask - what a stuck or rambling model does. How: dimension 0 of the residual stream
is a constant that no layer writes (token embeddings and image tokens carry it; attention and MLP outputs never
touch it), so after the final norm it is always positive, and the lm_head rows of eos and [SEG] read it with a
large negative weight. `favourite` does the opposite for one id: it then wins every step.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lisa_model import LisaSegmenter
from lisa_model.tiny import build_tiny_model, tiny_config, tiny_tokenizer


def talker(max_positions: int = 4096, extra_vocab: int = 0, favourite: int | None = None,
           seed: int = 0) -> LisaSegmenter:
    """extra_vocab: lm_head rows past the tokenizer's vocabulary (ids it cannot decode, as in padded vocabularies);
    favourite: an id generated at every step."""
    tok = tiny_tokenizer()
    config = tiny_config(tok.vocab_size + extra_vocab, tok.seg_token_id, hidden=128, layers=4, heads=4,
                         intermediate=344)
    config.text_config.max_position_embeddings = max_positions
    model = build_tiny_model(tok, seed, config)
    lm = model.model.language_model
    with torch.no_grad():
        lm.embed_tokens.weight[:, 0] = 10.0
        projector = model.model.multi_modal_projector.linear
        projector.weight[0], projector.bias[0] = 0.0, 10.0
        for layer in lm.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        for token, weight in ((tok.eos_token_id, -100.0), (tok.seg_token_id, -100.0), (favourite, 100.0)):
            if token is not None:
                model.lm_head.weight[token] = 0.0
                model.lm_head.weight[token, 0] = weight
    return LisaSegmenter(model.eval(), tok)


def save_talker(folder: Path, max_positions: int = 4096, favourite: int | None = None) -> Path:
    talker(max_positions, favourite=favourite).save_pretrained(folder)
    return folder


def save_segger(folder: Path) -> Path:
    """A model whose every token is [SEG]: max_new_tokens=n gives exactly n masks (random ones)."""
    return save_talker(folder, favourite=tiny_tokenizer().seg_token_id)
