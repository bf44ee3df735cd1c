"""What a member of the [SEG]-into-SAM family is: LISA's behaviour, and the hooks where a successor differs.

A family is one small object (see `lisa.py`, `uground.py`, ...). The model, the predictor, training and evaluation
call these hooks and never ask which family they hold; a family module holds only what differs from LISA:
how its released checkpoint is recognised and renamed, what it adds to the config and the tokenizer, how the
image reaches CLIP, which SAM prompts a [SEG] state becomes, and what an answer's tokens mean (labels,
rejections).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch

from ..checkpoint import CheckpointError
from ..constants import IM_END, IM_START, IMAGE_TOKEN, SEG_TOKEN

if TYPE_CHECKING:  # imported for annotations only: the model imports this module
    from ..modeling.lisa import LisaForSegmentation


@dataclass
class MaskPrompts:
    """SAM prompts that go with the [SEG] embeddings (LISA: none).

    points: (coords [n, k, 2] in SAM's input frame (x, y), labels [n, k]: 1 positive, 0 negative, -1 ignored);
    dense: [n, 1, 4g, 4g] mask prompt (SAM's `mask_input`, 256x256 for a 1024 px SAM)."""

    points: tuple[torch.Tensor, torch.Tensor] | None = None
    dense: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # intermediates worth inspecting (similarity)


@dataclass
class ImageGeometry:
    """Sizes of one image through both preprocessors: original (h, w), SAM-resized (h, w) before padding,
    SAM's square side, and the CLIP input's valid (h, w) inside its square when the family pads (else None)."""

    original_size: tuple[int, int]
    sam_input_size: tuple[int, int]
    sam_image_size: int
    clip_valid_size: tuple[int, int] | None = None


@dataclass
class AnswerParts:
    """What an answer's tokens mean beyond its text. labels: one per mask (the phrase it grounds, "" when the
    family gives none); rejected: the targets the model said are not in the image (GSVA's [REJ]), each with its
    label."""

    labels: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


@dataclass
class LayerChoice:
    """Which hidden-state entry (0 = embedding output ... E-1 = final post-norm state) each of a training batch's N
    [SEG]s reads (rows in order, [SEG]s in order within a row): `similarity` [N] for the family's similarity map
    (the [SEG] and the image-token states), `sam` [N] for the SAM embedding; `log_probs` [N] and `probs_mean` [E]
    when a learned policy sampled them (its loss needs them)."""

    similarity: torch.Tensor
    sam: torch.Tensor
    log_probs: torch.Tensor | None = None
    probs_mean: torch.Tensor | None = None


@dataclass
class FamilyLosses:
    """What a family adds to LISA's training loss.

    bce / dice: 0-d sums over the batch's masks (sum over images of n_i * term_i) that join LISA's BCE / DICE
    sums, so they are divided by the batch's mask count and weighted by bce_weight / dice_weight with them;
    added: terms added to the total as they are (already weighted), reported under their names;
    components: detached values for logs and tests."""

    bce: torch.Tensor | None = None
    dice: torch.Tensor | None = None
    added: dict[str, torch.Tensor] = field(default_factory=dict)
    components: dict[str, Any] = field(default_factory=dict)


class Family:
    """LISA's behaviour; subclasses override what their reference does differently."""

    name = "lisa"
    # config.json `architectures` of the family's released checkpoints
    architectures: tuple[str, ...] = ()
    # tokens the family adds besides [SEG] (and <im_start>/<im_end>), in the order the release added them
    extra_tokens: tuple[str, ...] = ()
    # released key -> our module name, tried before LISA's rules (None drops the key)
    key_rules: tuple[tuple[str, str | None], ...] = ()
    # the last-layer states of the image tokens are needed to build the SAM prompts (similarity maps)
    needs_image_states = False
    # what opens the first question, the image included (LISA: the image alone on the first line)
    image_prefix = IMAGE_TOKEN + "\n"
    # tokenizer spacing: False = transformers 4.31's slow LlamaTokenizer (whitespace next to an added token is
    # stripped), True = 4.44's (kept); see LisaTokenizer.keep_whitespace
    keeps_whitespace = False

    @property
    def task_tokens(self) -> tuple[str, ...]:
        """Every token the family adds to its base LLaMA tokenizer, in the release's order (ids follow it)."""
        return (SEG_TOKEN, *self.extra_tokens, IM_START, IM_END)

    def matches(self, raw_config: Mapping, keys: Iterable[str]) -> bool:
        """True when a released checkpoint (its config.json and weight key names) is of this family."""
        return bool(set(raw_config.get("architectures") or ()) & set(self.architectures))

    def config_options(self, raw_config: Mapping, keys: Iterable[str]) -> dict:
        """What the family keeps in `LisaConfig.family_options`, read from a released config."""
        return {}

    def bare_release_config(self, raw: Mapping) -> dict:
        """The config.json of the base model a bare-state-dict release was trained from, completed with what the
        family's training set beyond it (read as a released config.json from then on)."""
        return dict(raw)

    def unwrap_state(self, state: dict[str, torch.Tensor], options: Mapping, where: str = "checkpoint"
                     ) -> dict[str, torch.Tensor]:
        """A released shard (or meta tensors of its shapes) in LISA's released key names: wrappers removed,
        adapters merged. options: the config's family_options. LISA: already so."""
        return state

    def bind(self, config, tokenizer) -> None:
        """Make a model's config and its tokenizer agree: the tokenizer takes the family's spacing, and the ids of
        `extra_tokens` go to `config.family_options["token_ids"]`, where the family's hooks read them."""
        tokenizer.keep_whitespace = self.keeps_whitespace
        if not self.extra_tokens:
            return
        missing = [t for t in self.extra_tokens if t not in tokenizer.added_tokens]
        if missing:
            raise CheckpointError(f"{self.name}: the tokenizer has no {missing} token(s); the family needs "
                                  f"{list(self.task_tokens)}")
        ids = {t: tokenizer.added_tokens[t] for t in self.extra_tokens}
        config.family_options = {**(config.family_options or {}), "token_ids": ids}

    @staticmethod
    def token_id(config, token: str) -> int:
        """The id of an extra token, as `bind` recorded it in the config."""
        try:
            return int(config.family_options["token_ids"][token])
        except (KeyError, TypeError):
            raise CheckpointError(f"the model's config records no id for {token} (family_options "
                                  f"{config.family_options}); build the model through LisaSegmenter") from None

    def rename(self, key: str) -> str | None | bool:
        """The family's own renaming of a released key: a name, None (drop), or False (not the family's key)."""
        for pattern, repl in self.key_rules:
            if re.search(pattern, key):
                return None if repl is None else re.sub(pattern, repl, key, count=1)
        return False

    def extra_modules(self, config) -> dict[str, torch.nn.Module]:
        """Modules the family's checkpoints carry beyond LISA's (attached to the model under these names)."""
        return {}

    def clip_pads_image(self, config) -> bool:
        """True when the image reaches CLIP padded to a square (LLaVA-1.5 successors), not centre-cropped."""
        return False

    def patch_mask(self, config, clip_valid_size: tuple[int, int] | None) -> torch.Tensor | None:
        """[1, 1 + P] bool (CLS first): False for CLIP patches that hold only padding, which then take no part in
        attention, in CLIP and in the language model; None (LISA): every patch counts."""
        return None

    def mask_prompts(self, model: "LisaForSegmentation", seg_states: torch.Tensor, seg_embeddings: torch.Tensor,
                     image_states: torch.Tensor | None, geometry: ImageGeometry) -> MaskPrompts:
        """SAM prompts besides the [SEG] embedding for each of n masks. seg_states [n, H] (the language model's
        states that predicted each [SEG]), seg_embeddings [n, 256], image_states [P, H] (last-layer states of
        the image tokens, when `needs_image_states`)."""
        return MaskPrompts()

    def answer_mask_states(self, model: "LisaForSegmentation", input_ids: torch.Tensor, image_tokens: torch.Tensor,
                           states: torch.Tensor) -> torch.Tensor:
        """[n, H] states that decode the masks of an answered prompt. input_ids [1, L]: prompt + answer (one
        image placeholder); image_tokens [1, P, H]; states [n, H]: those collected while generating, one per
        [SEG] (the prompt's first). LISA: those."""
        return states

    def loss_masks(self, model: "LisaForSegmentation", seg_logits: torch.Tensor, input_ids: torch.Tensor,
                   gt_masks: torch.Tensor) -> torch.Tensor:
        """What the mask losses compare with one image's targets gt_masks [n, h, w]: seg_logits [k, h, w] are
        the masks of the [SEG] tokens in its conversations input_ids [R, L]. LISA: one target per [SEG]."""
        return seg_logits

    def first_question(self, question: str) -> str:
        """A conversation's first user turn, written LISA's way ("<image>\\n" + question), in the family's words
        (`image_prefix` + question); a turn that does not start so is left as it is."""
        lisa = IMAGE_TOKEN + "\n"
        return self.image_prefix + question[len(lisa):] if question.startswith(lisa) else question

    def train_text_limit(self, config) -> int:
        """Token limit of a training conversation (the image placeholder counting one): LISA's reference cuts
        at its model_max_length 512 minus 255, whatever the image size."""
        return 512 - 255

    # ----- training ---------------------------------------------------------------------------------------------
    def configure_training(self, model: "LisaForSegmentation", options: Mapping) -> None:
        """Apply a training config's `family_options` (e.g. UGround's policy mode). LISA has none."""
        if options:
            raise ValueError(f"family {self.name} takes no training options (got {sorted(options)})")

    def trainable_prefixes(self, config) -> tuple[str, ...]:
        """Module-name prefixes the family trains fully besides LISA's (lm_head, embed_tokens, mask decoder,
        [SEG] head), e.g. SAM's prompt encoder when the family prompts SAM with more than the [SEG] vector."""
        return ()

    def untrained_prefixes(self, config) -> tuple[str, ...]:
        """Parts of `trainable_prefixes` that the family's loss never reaches (e.g. the box embeddings of a prompt
        encoder fed points only). The reference marks them trainable, but AdamW never moves a weight without a
        gradient, so freezing them changes nothing - and lets DistributedDataParallel run."""
        return ()

    def needs_layer_states(self, model: "LisaForSegmentation") -> bool:
        """True when the training forward must keep every layer's hidden states (for `choose_layers`)."""
        return False

    def choose_layers(self, model: "LisaForSegmentation", seg_layer_states: torch.Tensor) -> LayerChoice | None:
        """seg_layer_states [N, E, H]: the states that predicted each [SEG] of a training batch, per hidden-state
        entry (E = 1 unless `needs_layer_states`). None (LISA): the final layer for everything."""
        return None

    def training_losses(self, model: "LisaForSegmentation", prompts: list[MaskPrompts | None],
                        gt_masks: list[torch.Tensor], choice: LayerChoice | None) -> FamilyLosses:
        """The family's loss terms from each image's SAM prompts (`MaskPrompts.extras`; None for an image without
        [SEG]) and gt masks [n_i, H_i, W_i]. LISA adds none."""
        return FamilyLosses()

    def plain_text(self, text: str) -> str:
        """The answer as a robot reads it: the family's mask and control tokens removed, whitespace collapsed."""
        for token in ("[SEG]", *self.extra_tokens):
            text = text.replace(token, " ")
        return " ".join(text.split())

    def read_answer(self, ids: list[int], tokenizer) -> AnswerParts:
        """Labels and rejections of an answer. LISA: one unlabelled mask per [SEG]."""
        return AnswerParts(labels=[""] * ids.count(tokenizer.seg_token_id))

    def __repr__(self) -> str:
        return f"<family {self.name}>"
