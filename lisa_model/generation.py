"""Greedy decoding that keeps, for every generated [SEG], the final-layer state that predicted it.

The reference decodes without a KV cache and reads every position's state from the last step; with a cache each
step only sees its own position, so the state is collected as it is produced. `use_cache=False` reproduces the
reference's full recompute (for the benchmark; outputs agree within ~3e-7).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache

from .interruption import InferenceInterrupted
from .modeling.lisa import LisaForSegmentation


@dataclass
class GenerationOutput:
    """ids: generated ids (eos excluded); seg_states: [n_seg, H], the state before each [SEG], in order;
    step_times: seconds per decode step (prefill excluded); prefill_time: seconds."""

    ids: list[int]
    seg_states: torch.Tensor
    prefill_time: float = 0.0
    step_times: list[float] = field(default_factory=list)
    kept_states: torch.Tensor | None = None  # [k, H] prefill states at `keep` (e.g. the image tokens)


@torch.no_grad()
def greedy_generate(model: LisaForSegmentation, inputs_embeds: torch.Tensor, max_new_tokens: int,
                    eos_token_id: int, seg_token_id: int, use_cache: bool = True,
                    prompt_seg_states: torch.Tensor | None = None,
                    on_token: Callable[[list[int]], None] | None = None,
                    keep: slice | None = None, attention_mask: torch.Tensor | None = None) -> GenerationOutput:
    """Greedy decoding from spliced prompt embeddings [1, T, H].

    keep: prompt positions whose final-layer states are returned as `kept_states` (a causal model's state of a
    prompt position never changes as tokens follow, so the prefill's are final).
    attention_mask: [1, T] for the prompt when some of its tokens (padded image patches) take no part in
    attention; generated tokens are always attended.

    prompt_seg_states: states for [SEG] tokens already in the prompt (the reference turns those into masks
    too); they come first in the output, as they do in the reference.
    on_token: called with the ids so far after every generated token (progress reports).
    An InferenceInterrupted raised by a layer hook (see interruption.py) leaves with the ids generated so far.
    """
    ids: list[int] = []
    try:
        return _generate(model, inputs_embeds, max_new_tokens, eos_token_id, seg_token_id, use_cache,
                         prompt_seg_states, on_token, ids, keep, attention_mask)
    except InferenceInterrupted as e:
        e.output_ids, e.stage = list(ids), "generating"
        raise


def _generate(model, inputs_embeds, max_new_tokens, eos_token_id, seg_token_id, use_cache, prompt_seg_states,
              on_token, ids: list[int], keep: slice | None, mask: torch.Tensor | None) -> GenerationOutput:
    lm = model.model.language_model
    embed = lm.get_input_embeddings()
    cache = DynamicCache(config=model.config.text_config) if use_cache else None
    seg_states = [] if prompt_seg_states is None else list(prompt_seg_states)

    t0 = time.perf_counter()
    with model.masked_tokens_silenced(mask):
        out = lm(inputs_embeds=inputs_embeds, attention_mask=mask, past_key_values=cache, use_cache=use_cache)
    state = out.last_hidden_state[:, -1]
    kept = None if keep is None else out.last_hidden_state[0, keep]
    prefill_time = time.perf_counter() - t0
    step_times: list[float] = []
    sequence = inputs_embeds
    for step in range(max_new_tokens):
        token = int(model.lm_head(state).float().argmax(-1))
        if token == eos_token_id:
            break
        ids.append(token)
        if token == seg_token_id:
            seg_states.append(state[0])
        if on_token is not None:
            on_token(ids)
        if step == max_new_tokens - 1:
            break  # the last token needs no state: nothing follows it
        t0 = time.perf_counter()
        token_embed = embed(torch.tensor([[token]], device=inputs_embeds.device))
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((1, 1))], dim=1)
        if use_cache:
            out = lm(inputs_embeds=token_embed, attention_mask=mask, past_key_values=cache, use_cache=True)
        else:
            sequence = torch.cat([sequence, token_embed], dim=1)
            with model.masked_tokens_silenced(mask):
                out = lm(inputs_embeds=sequence, attention_mask=mask, use_cache=False)
        state = out.last_hidden_state[:, -1]
        step_times.append(time.perf_counter() - t0)
    hidden = model.config.text_config.hidden_size
    stacked = (torch.stack(seg_states) if seg_states
               else inputs_embeds.new_zeros((0, hidden)))
    return GenerationOutput(ids=ids, seg_states=stacked, prefill_time=prefill_time, step_times=step_times,
                            kept_states=kept)
