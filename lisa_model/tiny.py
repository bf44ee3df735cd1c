"""A tiny random-weight LISA for tests, demos and benchmarks: builds in seconds, offline.

Its weights are random, so its text and masks mean nothing; it exercises every code path of the real model
(CLIP -> projector -> LLaMA -> [SEG] -> SAM) at a size this CPU runs in well under a second.
"""
from __future__ import annotations

import io
import re
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import CLIPVisionConfig, LlamaConfig

from .configuration_lisa import PROJECTOR_LINEAR, LisaConfig, SamGeometry
from .constants import IM_END, IM_START, IMAGE_TOKEN, SEG_TOKEN
from .modeling.lisa import LisaForSegmentation
from .tokenization import LisaTokenizer

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

    module = sys.modules[__name__]
    source = inspect.getsource(module.build_tiny_tokenizer) + inspect.getsource(module._tiny_corpus)
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


def build_tiny_segmenter(seed: int = 0, config_fn=tiny_config, family: str = "lisa"):
    """A LisaSegmenter around a tiny random model of `family` (what `LisaSegmenter.from_pretrained("tiny-random",
    family=...)` gives)."""
    from .predictor import LisaSegmenter

    from .families import family_named

    tok = tiny_tokenizer()
    tok.add_tokens(family_named(family).extra_tokens)
    config = config_fn(tok.vocab_size, tok.seg_token_id)
    config.family = family
    model = build_tiny_model(tok, seed, config)
    return LisaSegmenter(model, tok)


def _tiny_corpus() -> list[str]:
    """About 600 deterministic English lines: LISA's system texts, question and answer templates, and
    colours / shapes / household objects, so the tiny vocabulary has whole-word pieces for demo prompts."""
    from .conversation import CONV_TEMPLATES

    colours = "red green blue yellow black white orange purple pink brown grey gray dark light".split()
    shapes = "circle square triangle rectangle star ellipse disk box ring line shape round".split()
    objects = ("cat dog person man woman child car bus bike chair table sofa bed lamp cup mug bottle plate "
               "bowl knife fork spoon scissors phone laptop keyboard book door window wall floor sky tree "
               "grass road shelf cabinet fridge oven sink towel clothes pillow plant flower umbrella bag "
               "shoe hat ball toy clock picture mirror curtain desk computer screen remote bread apple").split()
    places = "on the table|in the room|near the window|on the floor|in the kitchen|on the left|on the right"
    questions = ["Can you segment the {} in this image?", "Please segment the {} in this image.",
                 "What is {} in this image? Please respond with segmentation mask.",
                 "What is {} in this image? Please output segmentation mask.",
                 "Where is the {}? Please output segmentation mask and explain why.",
                 "Which object would you use to cut paper? Please output segmentation mask.",
                 "Describe the image briefly.", "the thing used for cutting Please output segmentation mask."]
    answers = ["It is [SEG].", "Sure, [SEG].", "Sure, it is [SEG].", "Sure, the segmentation result is [SEG].",
               "[SEG].", "Because it has a sharp blade.", "I cannot find it in this image.",
               "The {} is the object used for this, so it is [SEG]."]
    lines = [t.system for t in CONV_TEMPLATES.values()] + ["USER: ASSISTANT: [INST] [/INST] <<SYS>> <</SYS>>"]
    for n, obj in enumerate(objects):
        colour, shape = colours[n % len(colours)], shapes[n % len(shapes)]
        place = places.split("|")[n % 7]
        for q in questions:
            lines.append(q.format(f"{colour} {obj}") + " " + answers[n % len(answers)].format(obj))
        lines.append(f"There is a {colour} {shape} {obj} {place}. The {obj} is {colour}, and it is {shape}.")
        lines.append(f"A {obj} and a {objects[(n * 7) % len(objects)]} are {place}; {n} {obj}s in total.")
    return lines


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 1000) -> LisaTokenizer:
    """Train a small byte-fallback BPE sentencepiece model offline (seconds) with LLaMA's settings and ids
    (unk 0, bos 1, eos 2), add [SEG], <im_start>, <im_end> in that order, save it to `out_dir`.
    A `vocab_size` larger than the corpus supports gives fewer pieces (`vocab_size` reports the real size)."""
    sentences = []
    for line in _tiny_corpus():
        # the added tokens never reach sentencepiece, so they must not shape its pieces either
        sentences.extend(s for s in re.split("|".join(map(re.escape, (SEG_TOKEN, IM_START, IM_END, IMAGE_TOKEN))),
                                             line) if s.strip())
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        character_coverage=1.0, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, hard_vocab_limit=False, minloglevel=2)
    tok = LisaTokenizer(model.getvalue(), source="build_tiny_tokenizer")
    tok.add_tokens([SEG_TOKEN])
    tok.add_tokens([IM_START, IM_END])
    tok.save_pretrained(out_dir)
    return tok
