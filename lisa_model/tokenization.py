"""The LISA tokenizer on `sentencepiece` alone, id for id what the reference got from transformers 4.31.

The reference used the slow, legacy ``LlamaTokenizer`` of transformers 4.31. Current transformers tokenizers
give other ids for the same text (no dummy prefix after added tokens, "\\n" after <im_end> kept), and a
model fed other ids answers differently, so we reproduce the old behaviour here:

- the text is split on the added tokens ([SEG], <im_start>, <im_end>) and on <s>, </s>, <unk>;
- whitespace next to an added token is stripped (it was not an ``AddedToken`` in 4.31, and those strip both
  sides); next to <s>, </s>, <unk> it is kept (they were AddedTokens with lstrip=rstrip=False);
- every remaining chunk is encoded by sentencepiece on its own, so each one gets the "▁" dummy prefix;
- bos is prepended; "<image>" is not a token: the prompt is split on it and IMAGE_TOKEN_INDEX goes in between.

`keep_whitespace = True` gives transformers 4.44's slow tokenizer instead (families trained with it, e.g. GSVA):
no whitespace is stripped next to any added or special token, and decoding follows 4.44's rules.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Iterable, Sequence, Union

import sentencepiece as spm
import torch

from .constants import IGNORE_INDEX, IMAGE_TOKEN, IMAGE_TOKEN_INDEX, SEG_TOKEN
from .conversation import TemplateLike, get_template, wrap_image_token

__all__ = ["LisaTokenizer", "TokenizerError", "collate_conversations", "pad_sequences"]

MODEL_FILE = "tokenizer.model"
ADDED_TOKENS_FILE = "added_tokens.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
CONFIG_FILE = "tokenizer_config.json"
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token")
_DEFAULT_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


class TokenizerError(ValueError):
    """A tokenizer folder that cannot be used; the message names the file."""


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


class LisaTokenizer:
    """LLaMA sentencepiece model + LISA's added tokens, with the reference's encode/decode quirks."""

    def __init__(self, model_proto: bytes, added_tokens: Sequence[str] = (),
                 special_tokens: dict[str, str | dict] | None = None, model_max_length: int = 512,
                 source: str = "<memory>"):
        """`model_proto`: the bytes of a tokenizer.model; `special_tokens`: bos/eos/unk entries as in
        special_tokens_map.json (a string, or a dict with content/lstrip/rstrip); `source` names the origin
        in error messages."""
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except Exception as e:  # noqa: BLE001 - sentencepiece raises RuntimeError/OSError depending on version
            raise TokenizerError(f"{source}: not a sentencepiece model ({e})") from e
        self.model_max_length = model_max_length
        self.keep_whitespace = False  # True: transformers 4.44's spacing (set by the model's family)
        self._special_entries = dict(special_tokens or {})
        self._specials: dict[str, str] = {}  # "bos_token" -> "<s>" ...
        # (lstrip, rstrip) per no-split token: lstrip eats whitespace on its left, rstrip on its right
        self._strip: dict[str, tuple[bool, bool]] = {}
        for key in _SPECIAL_KEYS:
            entry = self._special_entries.get(key, _DEFAULT_SPECIALS[key])
            content = entry["content"] if isinstance(entry, dict) else entry
            if not self._in_sp_vocab(content):
                raise TokenizerError(f"{source}: {key} {content!r} is not in the sentencepiece vocabulary")
            self._specials[key] = content
            if isinstance(entry, dict):
                self._strip[content] = (bool(entry.get("lstrip")), bool(entry.get("rstrip")))
            else:  # 4.31 kept a plain-string special token from special_tokens_map.json as is: strip both sides
                self._strip[content] = (True, True) if key in self._special_entries else (False, False)
        self._added: dict[str, int] = {}
        self._added_by_id: dict[int, str] = {}
        self._split_re: re.Pattern | None = None
        self.add_tokens(list(added_tokens))

    # ----- loading / saving -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "LisaTokenizer":
        """Read tokenizer.model, added_tokens.json (or tokenizer_config.json's added_tokens_decoder),
        special_tokens_map.json and tokenizer_config.json from a checkpoint folder."""
        folder = Path(folder)
        if not folder.is_dir():
            raise TokenizerError(f"{folder}: tokenizer folder not found")
        model_path = folder / MODEL_FILE
        if not model_path.is_file():
            raise TokenizerError(f"{model_path}: missing (the LLaMA sentencepiece model)")
        config = _read_json(folder / CONFIG_FILE) or {}
        special_map = _read_json(folder / SPECIAL_TOKENS_FILE) or {}
        if config.get("legacy") is False:
            warnings.warn(f"{folder / CONFIG_FILE}: legacy=false; the reference's ids come from the legacy "
                          "tokenizer, which is what LisaTokenizer reproduces", stacklevel=2)
        # special_tokens_map.json overrode tokenizer_config.json in transformers 4.31; a plain string in the
        # config was wrapped as an AddedToken without stripping by LlamaTokenizer.__init__
        specials: dict[str, str | dict] = {}
        for key in _SPECIAL_KEYS:
            if key in special_map and special_map[key]:
                specials[key] = special_map[key]
            elif isinstance(config.get(key), dict):
                specials[key] = config[key]
        added = _read_json(folder / ADDED_TOKENS_FILE)
        if added is None:  # newer transformers keep them in tokenizer_config.json
            decoder = config.get("added_tokens_decoder") or {}
            added = {v["content"]: int(k) for k, v in decoder.items() if isinstance(v, dict) and "content" in v}
        tok = cls(model_path.read_bytes(), special_tokens=specials,
                  model_max_length=int(config.get("model_max_length", 512)), source=str(model_path))
        try:
            items = sorted((int(i), str(t)) for t, i in added.items() if i >= tok._sp.get_piece_size())
        except (TypeError, ValueError) as e:
            raise TokenizerError(f"{folder / ADDED_TOKENS_FILE}: ids must be integers ({e})") from e
        for expected, (i, token) in enumerate(items, tok._sp.get_piece_size()):
            if i != expected:
                raise TokenizerError(f"{folder / ADDED_TOKENS_FILE}: {token!r} has id {i}, expected {expected} "
                                     "(added tokens follow the sentencepiece vocabulary without gaps)")
            tok.add_tokens([token])
        return tok

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the four files a transformers 4.31 LlamaTokenizer (and `from_pretrained`) reads."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MODEL_FILE).write_bytes(self._sp.serialized_model_proto())
        (folder / ADDED_TOKENS_FILE).write_text(json.dumps(self._added, indent=2, sort_keys=True) + "\n")

        def entry(key: str) -> dict:
            lstrip, rstrip = self._strip[self._specials[key]]
            return {"content": self._specials[key], "lstrip": lstrip, "normalized": True, "rstrip": rstrip,
                    "single_word": False}
        special_map = {k: entry(k) for k in _SPECIAL_KEYS}
        special_map["pad_token"] = self._specials["unk_token"]
        (folder / SPECIAL_TOKENS_FILE).write_text(json.dumps(special_map, indent=2) + "\n")
        config = {"add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
                  "legacy": True, "model_max_length": self.model_max_length, "pad_token": None,
                  "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
                  **{k: {"__type": "AddedToken", **entry(k)} for k in _SPECIAL_KEYS}}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return folder

    # ----- vocabulary -------------------------------------------------------------------------------------------
    @property
    def bos_token_id(self) -> int:
        return self._sp.piece_to_id(self._specials["bos_token"])

    @property
    def eos_token_id(self) -> int:
        return self._sp.piece_to_id(self._specials["eos_token"])

    @property
    def unk_token_id(self) -> int:
        return self._sp.piece_to_id(self._specials["unk_token"])

    @property
    def pad_token_id(self) -> int:
        """The reference sets pad = unk (0 for LLaMA): padding and attention masks are built from this id."""
        return self.unk_token_id

    @property
    def seg_token_id(self) -> int:
        if SEG_TOKEN not in self._added:
            raise TokenizerError(f"this tokenizer has no {SEG_TOKEN} token (add it with add_tokens)")
        return self._added[SEG_TOKEN]

    @property
    def vocab_size(self) -> int:
        """Sentencepiece pieces plus added tokens (the embedding rows the model needs)."""
        return self._sp.get_piece_size() + len(self._added)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def added_tokens(self) -> dict[str, int]:
        return dict(self._added)

    def _in_sp_vocab(self, token: str) -> bool:
        return self._sp.piece_to_id(token) != self._sp.unk_id() or token == self._sp.id_to_piece(self._sp.unk_id())

    def add_tokens(self, tokens: Iterable[str]) -> int:
        """Append tokens that are not in the vocabulary yet (ids from vocab_size on); returns how many."""
        n = 0
        for token in tokens:
            if not isinstance(token, str) or not token:
                raise TokenizerError(f"cannot add token {token!r}")
            if token in self._added or self._in_sp_vocab(token):
                continue
            self._added[token] = self.vocab_size
            self._added_by_id[self._added[token]] = token
            self._strip[token] = (True, True)  # not an AddedToken in 4.31: whitespace on both sides is stripped
            n += 1
        no_split = sorted(set(self._added) | set(self._specials.values()), key=len, reverse=True)
        self._split_re = re.compile("(" + "|".join(map(re.escape, no_split)) + ")")
        return n

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Token string(s) -> id(s); unknown pieces give unk, as in transformers."""
        if isinstance(tokens, str):
            return self._added.get(tokens, self._sp.piece_to_id(tokens))
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, int):
            if ids in self._added_by_id:
                return self._added_by_id[ids]
            if not 0 <= ids < self._sp.get_piece_size():
                raise TokenizerError(f"token id {ids} is outside the vocabulary (size {self.vocab_size})")
            return self._sp.id_to_piece(ids)
        return [self.convert_ids_to_tokens(int(i)) for i in ids]

    # ----- encoding ---------------------------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = True, literal: tuple[int, int] | None = None) -> list[int]:
        """Text -> ids as the reference's ``tokenizer(text).input_ids`` ("<image>" is plain text here).

        literal: a (start, end) character span of `text` that is plain text whatever it spells: a "[SEG]" or
        "</s>" inside it is encoded as characters, never as the control token (a caller's instruction)."""
        chunks = self._split(text, literal)
        # chunks alternate text (even index) and no-split tokens (odd index), as re.split with a group does
        for i in range(1, len(chunks), 2):
            lstrip, rstrip = (False, False) if self.keep_whitespace else self._strip[chunks[i]]
            if lstrip:
                chunks[i - 1] = chunks[i - 1].rstrip()
            if rstrip:
                chunks[i + 1] = chunks[i + 1].lstrip()
        ids = [self.bos_token_id] if add_bos else []
        for i, chunk in enumerate(chunks):
            if i % 2:
                ids.append(self.convert_tokens_to_ids(chunk))
            elif chunk:
                ids.extend(self._sp.encode(chunk))  # sentencepiece adds the "▁" dummy prefix to every chunk
        return ids

    def _split(self, text: str, literal: tuple[int, int] | None) -> list[str]:
        """`re.split` on the no-split tokens, skipping matches that touch the literal span."""
        parts, pos = [], 0
        for m in self._split_re.finditer(text):
            if literal is not None and m.start() < literal[1] and m.end() > literal[0]:
                continue
            parts += [text[pos:m.start()], m.group()]
            pos = m.end()
        parts.append(text[pos:])
        return parts

    def encode_prompt(self, prompt: str, literal: tuple[int, int] | None = None) -> list[int]:
        """A prompt with "<image>" -> ids with IMAGE_TOKEN_INDEX where the image goes (tokenizer_image_token):
        each piece between images is encoded with bos, and the bos of every piece but the first is dropped.
        literal: a character span of `prompt` taken as plain text (see `encode`); an "<image>" in it is text."""
        bounds, pos = [], 0
        for m in re.finditer(re.escape(IMAGE_TOKEN), prompt):
            if literal is None or not (m.start() < literal[1] and m.end() > literal[0]):
                bounds.append((pos, m.start()))
                pos = m.end()
        bounds.append((pos, len(prompt)))
        pieces = []
        for start, end in bounds:
            span = None
            if literal is not None and literal[0] < end and literal[1] > start:
                span = (max(literal[0], start) - start, min(literal[1], end) - start)
            pieces.append(self.encode(prompt[start:end], literal=span))
        ids = list(pieces[0])
        drop = 1 if ids and ids[0] == self.bos_token_id else 0
        for piece in pieces[1:]:
            ids.append(IMAGE_TOKEN_INDEX)
            ids.extend(piece[drop:])
        return ids

    # ----- decoding ---------------------------------------------------------------------------------------------
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text as the reference's ``tokenizer.decode`` (transformers 4.31 slow tokenizer).

        Runs of sentencepiece ids are decoded by sentencepiece (byte-fallback pieces included: an invalid
        UTF-8 byte becomes one U+FFFD, as in the reference); added tokens stand alone and all parts are joined
        with single spaces, hence "[SEG]" and "<im_start>" always come out with a space on each side.
        Negative ids (IMAGE_TOKEN_INDEX, IGNORE_INDEX) are dropped: the reference could not decode them.
        skip_special_tokens drops <s>, </s> and <unk>/pad only, as 4.31 did (the added tokens stay).
        """
        skip = {self.bos_token_id, self.eos_token_id, self.unk_token_id} if skip_special_tokens else set()
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i < 0 or i in skip:
                continue
            if i in self._added_by_id:
                if run:
                    text = self._decode_run(run)
                    if text or not self.keep_whitespace:  # 4.44 drops an empty text before an added token
                        parts.append(text)
                    run = []
                parts.append(self._added_by_id[i])
            else:
                self.convert_ids_to_tokens(i)  # range check
                run.append(i)
        if run:
            parts.append(self._decode_run(run))
        return " ".join(parts)

    def _decode_run(self, run: list[int]) -> str:
        """LlamaTokenizer.convert_tokens_to_string (4.31, legacy): <s>, </s>, <unk> are written literally; one
        that follows ordinary pieces (not at the start) puts a space in front of the text decoded before it."""
        if self.keep_whitespace:
            return self._decode_run_kept(run)
        specials = {self.bos_token_id, self.eos_token_id, self.unk_token_id}
        out, pending, prev_special = "", [], False
        for k, i in enumerate(run):
            if i in specials:
                if not prev_special and k != 0:
                    out += " "
                out += self._sp.decode(pending) + self._sp.id_to_piece(i)
                pending, prev_special = [], True
            else:
                pending.append(i)
                prev_special = False
        return out + self._sp.decode(pending)

    def _decode_run_kept(self, run: list[int]) -> str:
        """transformers 4.44's LlamaTokenizer.convert_tokens_to_string (legacy, add_prefix_space): the first
        piece loses its "▁" by hand (a lone "▁" decodes to nothing); <s>, </s>, <unk> are written literally, with a
        space before one that follows text and after a leading one that is followed by a piece without "▁"."""
        pieces = [self._sp.id_to_piece(i) for i in run]
        pieces[0] = pieces[0].removeprefix("▁")
        specials = set(self._specials.values())
        out, pending, prev_special = "", [], False
        for k, piece in enumerate(pieces):
            if piece in specials:
                out += ("" if prev_special or k == 0 else " ") + self._sp.decode_pieces(pending) + piece
                pending, prev_special = [], True
                continue
            if prev_special and k == 1 and not piece.startswith("▁"):
                out += " "
            pending.append(piece)
            prev_special = False
        return out + self._sp.decode_pieces(pending)

    # ----- training ---------------------------------------------------------------------------------------------
    def tokenize_conversation(self, conversation: str, template: TemplateLike = "llava_v1"
                              ) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one training conversation (image already wrapped in <im_start>/<im_end>),
        labelled as the reference's collate_fn does: only the answers and their "</s>" keep their ids.

        The reference measures each round with separately tokenized strings: a round's length counts its own
        bos in place of the "</s>" that ends it, and the instruction length is that of "...ASSISTANT: " (or
        "...[/INST] ") minus 2 (its bos and the trailing "▁" of the space). Those offsets are reproduced as is.
        """
        tpl = get_template(template)
        ids = self.encode_prompt(conversation)
        labels = list(ids)
        total = sum(1 for i in ids if i != self.pad_token_id)
        labels[0] = IGNORE_INDEX  # bos
        cur = 1
        for rnd in conversation.split(tpl.sep2):
            if rnd == "":
                break
            parts = rnd.split(tpl.answer_sep)
            if len(parts) != 2:
                raise ValueError(f"{tpl.name}: a round must contain {tpl.answer_sep!r} exactly once: {rnd!r}")
            round_len = len(self.encode_prompt(rnd))
            instruction_len = len(self.encode_prompt(parts[0] + tpl.answer_sep)) - 2
            for k in range(cur, min(cur + instruction_len, len(labels))):
                labels[k] = IGNORE_INDEX
            cur += round_len
        labels[cur:] = [IGNORE_INDEX] * max(0, len(labels) - cur)
        # the reference asserts this (unless the text exceeds model_max_length): a mismatch means the labels
        # would be shifted against the text, e.g. a separator inside an answer
        if cur < self.model_max_length and cur != total:
            raise ValueError(f"{tpl.name}: label rounds cover {cur} tokens but the conversation has {total}")
        return ids, labels


def pad_sequences(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad int sequences to one [B, T] long tensor."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, :len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out


def collate_conversations(tokenizer: LisaTokenizer, conversations: Sequence[str],
                          template: TemplateLike = "llava_v1", use_im_start_end: bool = True,
                          truncate_len: int | None = None) -> dict[str, Union[torch.Tensor, list[str]]]:
    """The text half of the reference's collate_fn: wrap "<image>", tokenize and label each conversation,
    right-pad with the pad id (labels with IGNORE_INDEX).

    attention_mask is ``input_ids != pad_id``, like the reference's (so a literal <unk> in the text is masked
    too). The reference trains with ``truncate_len = model_max_length - 255`` (257 for its 512).
    """
    texts = [wrap_image_token(c, use_im_start_end) for c in conversations]
    encoded = [tokenizer.tokenize_conversation(t, template) for t in texts]
    input_ids = pad_sequences([e[0] for e in encoded], tokenizer.pad_token_id)
    labels = pad_sequences([e[1] for e in encoded], IGNORE_INDEX)
    attention_mask = input_ids.ne(tokenizer.pad_token_id)
    if truncate_len is not None and input_ids.shape[1] > truncate_len:
        input_ids, labels = input_ids[:, :truncate_len], labels[:, :truncate_len]
        attention_mask = attention_mask[:, :truncate_len]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "conversations": texts}
