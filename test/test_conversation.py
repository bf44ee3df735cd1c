"""Conversation templates against the reference fixture and the reference's string formats."""
import dataclasses
import json
from pathlib import Path

import pytest

from lisa_model.conversation import (CONV_TEMPLATES, IGNORE_INDEX, IMAGE_TOKEN_INDEX, build_conversation,
                                     build_prompt, get_template, wrap_image_token)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lisa_tiny_reference"
CASES = sorted(p.name for p in (FIXTURE / "cases").iterdir() if p.is_dir())

V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
             "helpful, detailed, and polite answers to the human's questions.")
LLAMA_2_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                  "that the user provides, and assist the user with a variety of tasks using natural language.")


def test_constants():
    assert IMAGE_TOKEN_INDEX == -200 and IGNORE_INDEX == -100


def test_registry():
    v1, l2 = CONV_TEMPLATES["llava_v1"], CONV_TEMPLATES["llava_llama_2"]
    assert (v1.system, v1.roles, v1.sep, v1.sep2) == (V1_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>")
    assert (l2.system, l2.roles, l2.sep, l2.sep2) == (LLAMA_2_SYSTEM, ("USER", "ASSISTANT"), "<s>", "</s>")
    assert get_template(v1) is v1
    with pytest.raises(dataclasses.FrozenInstanceError):
        v1.sep = "###"
    with pytest.raises(ValueError, match="unknown conversation template"):
        get_template("vicuna_v0")


@pytest.mark.parametrize("case", CASES)
def test_prompt_matches_fixture(case):
    expected = json.loads((FIXTURE / "cases" / case / "expected.json").read_text())
    assert build_prompt(expected["instruction"], expected["conv_type"]) == expected["prompt"]


def test_prompt_without_im_start_end():
    assert build_prompt("Hi.", "llava_v1", use_im_start_end=False) == f"{V1_SYSTEM} USER: <image>\nHi. ASSISTANT:"


def test_llava_llama_2_prompt():
    # LLaMA-2 chat: system block inside the first [INST]; the leading "<s>" separator is stripped; an open
    # assistant turn adds nothing after "[/INST]"
    expected = ("[INST] <<SYS>>\n" + LLAMA_2_SYSTEM + "\n<</SYS>>\n\n"
                "<im_start><image><im_end>\nWhat is the red cup in this image? [/INST]")
    assert build_prompt("What is the red cup in this image?", "llava_llama_2") == expected


def test_llava_llama_2_conversation():
    conv = build_conversation([("<image>\nq1", "a1 [SEG]."), ("q2", "a2")], "llava_llama_2")
    assert conv == ("[INST] <<SYS>>\n" + LLAMA_2_SYSTEM + "\n<</SYS>>\n\n<image>\nq1 [/INST] a1 [SEG]. </s>"
                    "<s>[INST] q2 [/INST] a2 </s>")


def test_llava_v1_conversation():
    conv = build_conversation([("<image>\nq1", "a1"), ("q2", "a2")], "llava_v1")
    assert conv == f"{V1_SYSTEM} USER: <image>\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>"


def test_training_conversations_match_fixture():
    expected = json.loads((FIXTURE / "train_case" / "expected.json").read_text())
    # the fixture's conversations are "{system} USER: {question} ASSISTANT: {answer}</s>": rebuild them
    got = []
    for image in expected["images"]:
        for conv in image["conversations_before_collate"]:
            question, answer = conv[len(V1_SYSTEM) + len(" USER: "):-len("</s>")].split(" ASSISTANT: ")
            got.append(build_conversation([(question, answer)], expected["conv_type"]))
            assert got[-1] == conv
    assert [wrap_image_token(c) for c in got] == expected["conversation_list_after_collate"]


def test_conversation_rejects_empty_turns():
    with pytest.raises(ValueError):
        build_conversation([], "llava_v1")
    with pytest.raises(ValueError):
        build_conversation([("q", "")], "llava_llama_2")
