"""Conversation templates: the prompt strings LISA was trained and evaluated with.

Two templates matter for the released checkpoints: ``llava_v1`` (LISA-7B, LLaVA v1 / Vicuna style) and
``llava_llama_2`` (LISA-13B-llama2, LLaMA-2 chat style). The strings must match the reference exactly,
character for character: the tokenizer turns every space and separator into ids the model was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

from .constants import IGNORE_INDEX, IM_END, IM_START, IMAGE_TOKEN, IMAGE_TOKEN_INDEX, SEG_TOKEN

__all__ = ["ConversationTemplate", "CONV_TEMPLATES", "get_template", "build_prompt", "build_prompt_with_span",
           "build_conversation", "wrap_image_token", "IMAGE_TOKEN", "IM_START", "IM_END", "SEG_TOKEN",
           "IMAGE_TOKEN_INDEX", "IGNORE_INDEX"]

STYLE_TWO = "two"  # "{system} USER: q ASSISTANT: a</s>USER: ..."
STYLE_LLAMA_2 = "llama_2"  # "[INST] <<SYS>>\n{system}\n<</SYS>>\n\nq [/INST] a </s><s>[INST] ..."


@dataclass(frozen=True)
class ConversationTemplate:
    """One prompt format.

    ``answer_sep`` is what separates a user turn from the assistant's answer inside one round and ``sep2``
    ends a round; training uses both to find which tokens are the answer (the only labelled ones).
    """

    name: str
    system: str
    roles: tuple[str, str]
    style: str
    sep: str
    sep2: str
    answer_sep: str

    def format(self, messages: Sequence[tuple[str, str]]) -> str:
        """Render alternating (role, message) pairs; an empty message leaves that turn open (the prompt)."""
        if self.style == STYLE_TWO:
            return self._format_two(messages)
        if self.style == STYLE_LLAMA_2:
            return self._format_llama_2(messages)
        raise ValueError(f"template {self.name!r}: unknown style {self.style!r}")

    def _format_two(self, messages: Sequence[tuple[str, str]]) -> str:
        seps = (self.sep, self.sep2)
        out = self.system + self.sep
        for i, (role, message) in enumerate(messages):
            # user turns end with sep (" "), assistant turns with sep2 ("</s>"); an open turn is just "ROLE:"
            out += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
        return out

    def _format_llama_2(self, messages: Sequence[tuple[str, str]]) -> str:
        if not messages or not messages[0][1] or messages[0][0] != self.roles[0]:
            raise ValueError(f"template {self.name!r}: the first message must be a non-empty user message")
        out = ""
        for i, (_, message) in enumerate(messages):
            if not message:
                continue  # an open assistant turn adds nothing after "[/INST]"
            if i == 0:
                message = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{message}"
            if i % 2 == 0:
                out += f"{self.sep}[INST] {message} [/INST]"
            else:
                out += f" {message} {self.sep2}"
        # The reference strips the leading "<s>" with str.lstrip, i.e. as a character set {'<', 's', '>'}.
        # The text always continues with "[INST]", so this removes exactly the first "<s>".
        return out.lstrip(self.sep)


_LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the human's questions.")
_LLAVA_LLAMA_2_SYSTEM = ("You are a helpful language and vision assistant. "
                         "You are able to understand the visual content that the user provides, "
                         "and assist the user with a variety of tasks using natural language.")

CONV_TEMPLATES: dict[str, ConversationTemplate] = {
    "llava_v1": ConversationTemplate(
        name="llava_v1", system=_LLAVA_V1_SYSTEM, roles=("USER", "ASSISTANT"), style=STYLE_TWO,
        sep=" ", sep2="</s>", answer_sep=" ASSISTANT: "),
    "llava_llama_2": ConversationTemplate(
        name="llava_llama_2", system=_LLAVA_LLAMA_2_SYSTEM, roles=("USER", "ASSISTANT"), style=STYLE_LLAMA_2,
        # the reference's collate_fn labels everything after "[/INST] " in each round
        sep="<s>", sep2="</s>", answer_sep="[/INST] "),
}

TemplateLike = Union[str, ConversationTemplate]


def get_template(template: TemplateLike) -> ConversationTemplate:
    """A template by name (or the template itself)."""
    if isinstance(template, ConversationTemplate):
        return template
    try:
        return CONV_TEMPLATES[template]
    except KeyError:
        raise ValueError(f"unknown conversation template {template!r}; known: {sorted(CONV_TEMPLATES)}") from None


def wrap_image_token(text: str, use_im_start_end: bool = True) -> str:
    """Every "<image>" -> "<im_start><image><im_end>" (what chat.py and collate_fn do when mm_use_im_start_end)."""
    return text.replace(IMAGE_TOKEN, IM_START + IMAGE_TOKEN + IM_END) if use_im_start_end else text


def build_prompt(instruction: str, template: TemplateLike = "llava_v1", use_im_start_end: bool = True,
                 image_prefix: str = IMAGE_TOKEN + "\n") -> str:
    """The inference prompt of the reference's chat.py: image + instruction as the user turn, then an open
    assistant turn for the model to complete."""
    return build_prompt_with_span(instruction, template, use_im_start_end, image_prefix)[0]


def build_prompt_with_span(instruction: str, template: TemplateLike = "llava_v1", use_im_start_end: bool = True,
                           image_prefix: str = IMAGE_TOKEN + "\n") -> tuple[str, tuple[int, int]]:
    """(prompt, (start, end)): the prompt and where the instruction sits in it, so a tokenizer can keep the
    caller's text literal. An "<image>" inside the instruction is left as written (chat.py would wrap it too,
    which only matters when the caller wants it parsed - the tokenizer then sees a second image either way).
    image_prefix: what precedes the instruction, the image included (the model family's `image_prefix`)."""
    tpl = get_template(template)
    user = wrap_image_token(image_prefix, use_im_start_end) + instruction
    prompt = tpl.format([(tpl.roles[0], user), (tpl.roles[1], "")])
    end = prompt.index(user) + len(user)
    return prompt, (end - len(instruction), end)


def build_conversation(turns: Sequence[tuple[str, str]], template: TemplateLike = "llava_v1") -> str:
    """A training conversation from (user, assistant) pairs, as the reference's datasets build it.

    The image token is the caller's business (LISA's questions start with "<image>\\n"); it is wrapped in
    <im_start>/<im_end> at collate time (`wrap_image_token`). Label it with
    `LisaTokenizer.tokenize_conversation(conversation, template)`.
    """
    tpl = get_template(template)
    if not turns:
        raise ValueError("a conversation needs at least one (user, assistant) turn")
    messages: list[tuple[str, str]] = []
    for user, assistant in turns:
        if not user or not assistant:
            raise ValueError("training turns need a non-empty user message and a non-empty answer")
        messages += [(tpl.roles[0], user), (tpl.roles[1], assistant)]
    return tpl.format(messages)
