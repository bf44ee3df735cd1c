"""8-/4-bit loading of the language model with bitsandbytes (CUDA only), as the reference does it.

SAM and the CLIP tower are not quantised (the reference skips `visual_model`; CLIP is tiny next to the LLM).
"""
from __future__ import annotations

import torch
from torch import nn


def check_quantization_available(device: str) -> None:
    """Fail early, with a clear message, where bitsandbytes quantisation cannot run."""
    if not torch.cuda.is_available() or not str(device).startswith("cuda"):
        raise RuntimeError("load_in_8bit / load_in_4bit need a CUDA device (bitsandbytes); "
                           f"this machine has {'no CUDA' if not torch.cuda.is_available() else 'device ' + str(device)}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError("load_in_8bit / load_in_4bit need the bitsandbytes package: pip install bitsandbytes") \
            from None


def quantize_language_model(model: nn.Module, bits: int) -> None:
    """Replace the LLaMA's Linear layers (not lm_head) by bitsandbytes layers, in place, on the model's device."""
    import bitsandbytes as bnb

    lm = model.model.language_model
    for parent in list(lm.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            if bits == 8:
                q = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                        has_fp16_weights=False, threshold=6.0)
                q.weight = bnb.nn.Int8Params(child.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
            else:
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.float16, quant_type="nf4", compress_statistics=True)
                q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4",
                                             compress_statistics=True)
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, q.to(child.weight.device))  # moving to CUDA performs the quantisation
