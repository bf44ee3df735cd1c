"""LisaTokenizer against the reference fixture (ids, decodes, training labels) and the tiny tokenizer."""
import json
import shutil
from pathlib import Path

import pytest

from lisa_model.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from lisa_model.conversation import build_conversation, build_prompt, wrap_image_token
from lisa_model.tiny import build_tiny_tokenizer
from lisa_model.tokenization import (LisaTokenizer, TokenizerError, collate_conversations,
                                     pad_sequences)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lisa_tiny_reference"
CASES = sorted(p.name for p in (FIXTURE / "cases").iterdir() if p.is_dir())
TOKENIZER_FILES = ("tokenizer.model", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json")


@pytest.fixture(scope="module")
def tok() -> LisaTokenizer:
    return LisaTokenizer.from_pretrained(FIXTURE / "tiny-lisa")


def _case(name: str) -> dict:
    return json.loads((FIXTURE / "cases" / name / "expected.json").read_text())


def _copy_tokenizer(dst: Path) -> Path:
    dst.mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy(FIXTURE / "tiny-lisa" / name, dst / name)
    return dst


def _labelled_spans(ids: list[int], labels: list[int]) -> list[list[int]]:
    spans, cur = [], []
    for i, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == i
            cur.append(label)
        elif cur:
            spans, cur = spans + [cur], []
    return spans + ([cur] if cur else [])


def test_fixture_vocabulary(tok):
    assert tok.seg_token_id == 1000
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 0, 0)
    assert tok.vocab_size == len(tok) == 1003
    assert tok.convert_tokens_to_ids(["[SEG]", "<im_start>", "<im_end>", "<s>"]) == [1000, 1001, 1002, 1]
    assert tok.convert_ids_to_tokens([1000, 2]) == ["[SEG]", "</s>"]
    # what the reference's seg_token_idx is: tokenizer("[SEG]", add_special_tokens=False).input_ids[0]
    assert tok.encode("[SEG]", add_bos=False) == [1000]
    assert tok.add_tokens(["[SEG]", "<s>"]) == 0


@pytest.mark.parametrize("case", CASES)
def test_prompt_ids(tok, case):
    expected = _case(case)
    ids = tok.encode_prompt(build_prompt(expected["instruction"], expected["conv_type"]))
    assert ids == expected["input_ids"]
    assert ids.count(IMAGE_TOKEN_INDEX) == 1


@pytest.mark.parametrize("case", CASES)
def test_decode(tok, case):
    expected = _case(case)
    assert tok.decode(expected["generated_ids"]) == expected["decoded_generated"]
    assert tok.convert_ids_to_tokens(expected["generated_ids"]) == expected["generated_tokens"]
    full = [i for i in expected["output_ids"] if i != IMAGE_TOKEN_INDEX]
    assert tok.decode(full) == expected["decoded_full_raw"]
    assert tok.decode(expected["output_ids"]) == expected["decoded_full_raw"]  # the image position is dropped
    assert tok.decode(full).replace("\n", "").replace("  ", " ") == expected["decoded_full_chatpy"]


def test_decode_special_tokens(tok):
    # 4.31: <s>/</s>/<unk> are written literally, one after ordinary pieces gets a space in front of them
    assert tok.decode([1, 945, 2]) == "<s> C</s>"
    assert tok.decode([1, 945, 2], skip_special_tokens=True) == "C"
    assert tok.decode([945, 1000, 1001, 945]) == "C [SEG] <im_start> C"
    with pytest.raises(TokenizerError):
        tok.decode([5000])


def test_whitespace_rules(tok):
    # stripped next to the added tokens ...
    assert tok.encode("<im_end>\nDescribe") == tok.encode("<im_end>Describe")
    assert tok.encode("it is [SEG] .") == tok.encode("it is[SEG].")
    # ... kept next to </s>, and every chunk gets the dummy prefix
    assert tok.encode("a </s>") != tok.encode("a</s>")
    assert tok.encode("[SEG]a", add_bos=False) == [1000] + tok.encode("a", add_bos=False)


def test_train_case_collate(tok):
    expected = json.loads((FIXTURE / "train_case" / "expected.json").read_text())
    conversations = [c for image in expected["images"] for c in image["conversations_before_collate"]]
    batch = collate_conversations(tok, conversations, expected["conv_type"], expected["use_mm_start_end"])
    assert batch["conversations"] == expected["conversation_list_after_collate"]
    assert batch["input_ids"].tolist() == expected["input_ids"]
    assert batch["labels"].tolist() == expected["labels"]
    assert batch["attention_mask"].int().tolist() == expected["attention_masks"]
    short = collate_conversations(tok, conversations, "llava_v1", truncate_len=100)
    assert short["input_ids"].shape == short["labels"].shape == short["attention_mask"].shape == (3, 100)


@pytest.mark.parametrize("template,end", [("llava_v1", "</s>"), ("llava_llama_2", " </s>")])
def test_multi_turn_labels(tok, template, end):
    answers = ["Sure, it is [SEG].", "It is [SEG]. Because it is red."]
    conv = wrap_image_token(build_conversation(
        [("<image>\nWhat is the cup in this image?", answers[0]), ("And the plate?", answers[1])], template))
    ids, labels = tok.tokenize_conversation(conv, template)
    assert ids == tok.encode_prompt(conv) and len(labels) == len(ids)
    spans = _labelled_spans(ids, labels)
    # only the answers and the "</s>" closing them are labelled (decode puts spaces around [SEG])
    assert [tok.decode(s) for s in spans] == [a.replace(" [SEG]", " [SEG]  ") + end for a in answers]


def test_label_errors(tok):
    conv = build_conversation([("q", "I said ASSISTANT: no")], "llava_v1")
    with pytest.raises(ValueError, match="exactly once"):
        tok.tokenize_conversation(conv, "llava_v1")


def test_pad_sequences():
    assert pad_sequences([[1, 2, 3], [4]], 0).tolist() == [[1, 2, 3], [4, 0, 0]]


def test_save_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path / "saved")
    again = LisaTokenizer.from_pretrained(tmp_path / "saved")
    assert again.added_tokens == tok.added_tokens == {"[SEG]": 1000, "<im_start>": 1001, "<im_end>": 1002}
    assert (tmp_path / "saved" / "tokenizer.model").read_bytes() == (FIXTURE / "tiny-lisa/tokenizer.model").read_bytes()
    for case in CASES:
        expected = _case(case)
        assert again.encode_prompt(expected["prompt"]) == expected["input_ids"]
        assert again.decode(expected["generated_ids"]) == expected["decoded_generated"]


def test_corrupt_or_missing_files(tmp_path):
    folder = _copy_tokenizer(tmp_path / "tok")
    (folder / "tokenizer.model").write_bytes(b"this is not a sentencepiece model" * 8)
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        LisaTokenizer.from_pretrained(folder)
    (folder / "tokenizer.model").unlink()
    with pytest.raises(TokenizerError, match="tokenizer.model.*missing"):
        LisaTokenizer.from_pretrained(folder)
    with pytest.raises(TokenizerError, match="not found"):
        LisaTokenizer.from_pretrained(tmp_path / "nowhere")

    folder = _copy_tokenizer(tmp_path / "tok2")
    (folder / "added_tokens.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="added_tokens.json"):
        LisaTokenizer.from_pretrained(folder)
    (folder / "added_tokens.json").write_text('{"[SEG]": 1000, "<im_end>": 1005}')
    with pytest.raises(TokenizerError, match="added_tokens.json.*1005"):
        LisaTokenizer.from_pretrained(folder)
    (folder / "added_tokens.json").unlink()  # a plain LLaMA tokenizer: loads, but has no [SEG]
    plain = LisaTokenizer.from_pretrained(folder)
    assert plain.vocab_size == 1000
    with pytest.raises(TokenizerError, match=r"\[SEG\]"):
        plain.seg_token_id


def test_tiny_tokenizer(tmp_path):
    tiny = build_tiny_tokenizer(tmp_path / "tiny")
    assert all((tmp_path / "tiny" / name).is_file() for name in TOKENIZER_FILES)
    assert (tiny.bos_token_id, tiny.eos_token_id, tiny.pad_token_id) == (1, 2, 0)
    n = tiny.vocab_size - 3
    assert tiny.added_tokens == {"[SEG]": n, "<im_start>": n + 1, "<im_end>": n + 2} and tiny.seg_token_id == n
    # the corpus makes LISA's words whole pieces
    for word in ("segment", "mask", "Sure", "ASSISTANT", "scissors"):
        assert tiny.encode(word, add_bos=False) == [tiny.convert_tokens_to_ids("\u2581" + word)]
    for text in ("Can you segment the red cup in this image?", "Héllo wörld ✓ 日本 #42"):
        assert tiny.decode(tiny.encode(text)) == "<s>" + text  # byte fallback covers unseen characters
    ids = tiny.encode_prompt(build_prompt("Please output segmentation mask.") + " Sure, it is [SEG].")
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and tiny.seg_token_id in ids and max(ids) < tiny.vocab_size
    again = LisaTokenizer.from_pretrained(tmp_path / "tiny")
    assert again.encode_prompt(build_prompt("What is the dog?")) == tiny.encode_prompt(build_prompt("What is the dog?"))
    # deterministic: the same model bytes every build
    build_tiny_tokenizer(tmp_path / "tiny2")
    assert (tmp_path / "tiny2/tokenizer.model").read_bytes() == (tmp_path / "tiny/tokenizer.model").read_bytes()


def test_tiny_tokenizer_cache_is_keyed_on_its_builder(monkeypatch):
    """A changed builder (code, corpus, sentencepiece) gets a new cache folder, never a stale copy."""
    from lisa_model import tiny

    key = tiny._builder_key()
    assert key == tiny._builder_key()  # stable: the cache is reused while nothing changes
    monkeypatch.setattr(tiny, "_tiny_corpus", lambda: ["another corpus"])
    assert tiny._builder_key() != key
