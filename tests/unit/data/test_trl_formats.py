"""TRL's dataset formats read without extra flags: conversational `messages` and `prompt`/`completion` for SFT,
`text` for --pretrain_mode, and implicit-prompt preference pairs (chosen/rejected as whole conversations)."""

from __future__ import annotations

import pytest

from repulse.data.preference import PreferenceDataset
from repulse.data.sft import SFTDataset, SFTFormat, sft_format
from repulse.data.templates import split_implicit_prompt
from repulse.infra.errors import DataError

USER = {"role": "user", "content": "this man is"}
GOOD = {"role": "assistant", "content": "very good ."}
BAD = {"role": "assistant", "content": "a jerk ."}


@pytest.mark.parametrize(
    ("columns", "pretrain_mode", "expected"),
    [
        (["messages"], False, SFTFormat("messages", None)),
        (["prompt", "completion", "id"], False, SFTFormat("prompt", "completion")),
        (["text"], True, SFTFormat("text", None)),
        (["input", "messages"], False, SFTFormat("input", "output")),  # the flags' keys win when present
        (None, False, SFTFormat("input", "output")),  # embedded data: fixed keys
    ],
)
def test_sft_format_recognises_trl_datasets(columns, pretrain_mode, expected):
    assert sft_format(columns, "input", "output", pretrain_mode) == expected


def test_a_missing_key_names_the_formats_it_would_read():
    with pytest.raises(DataError, match=r"missing key\(s\) \['input'\] .*'messages' \(lists of \{role, content\}\)"):
        sft_format(["question", "answer"], "input", "output", False)
    with pytest.raises(DataError, match=r"missing key\(s\) \['query'\]"):  # an explicit --input_key is never guessed
        sft_format(["messages"], "query", "output", False)


def test_messages_rows_train_like_the_explicit_conversation_flags(tiny_tokenizer):
    rows = [{"messages": [USER, GOOD]}, {"messages": [USER, {**GOOD, "content": "so kind ."}]}]
    trl = SFTDataset(rows, tiny_tokenizer, 64, input_key="messages", output_key=None)
    explicit = SFTDataset(rows, tiny_tokenizer, 64, input_key="messages", output_key="", apply_chat_template=True)
    for a, b in zip(trl.items, explicit.items, strict=True):
        assert a["input_ids"].tolist() == b["input_ids"].tolist() and a["prompt_len"] == b["prompt_len"]
    reply = tiny_tokenizer.decode(trl[0]["input_ids"][trl[0]["prompt_len"] :])
    assert reply.strip().startswith("very good .")  # the loss is on the assistant's reply only


def test_conversational_prompt_completion_uses_the_chat_template(tiny_tokenizer):
    (item,) = SFTDataset(
        [{"prompt": [USER], "completion": [GOOD]}], tiny_tokenizer, 64, input_key="prompt", output_key="completion"
    ).items
    (chat,) = SFTDataset([{"messages": [USER, GOOD]}], tiny_tokenizer, 64, input_key="messages", output_key=None).items
    assert item["input_ids"].tolist() == chat["input_ids"].tolist()


def test_implicit_prompt_pairs_equal_explicit_prompt_pairs(tiny_tokenizer):
    implicit = PreferenceDataset(
        [{"chosen": [USER, GOOD], "rejected": [USER, BAD]}], tiny_tokenizer, 64, prompt_key=None
    )
    explicit = PreferenceDataset(
        [{"prompt": [USER], "chosen": GOOD["content"], "rejected": BAD["content"]}],
        tiny_tokenizer,
        64,
        apply_chat_template=True,
    )
    a, b = implicit[0], explicit[0]
    assert a["prompt_len"] == b["prompt_len"] > 0
    assert a["chosen_ids"].tolist() == b["chosen_ids"].tolist()
    assert a["rejected_ids"].tolist() == b["rejected_ids"].tolist()


def test_split_implicit_prompt_keeps_every_shared_turn_and_refuses_other_shapes():
    system = {"role": "system", "content": "be kind"}
    prompt, chosen, rejected = split_implicit_prompt([system, USER, GOOD], [system, USER, BAD])
    assert prompt == [system, USER] and (chosen, rejected) == ("very good .", "a jerk .")
    with pytest.raises(DataError, match="one assistant message each"):
        split_implicit_prompt([USER, GOOD, USER, GOOD], [USER, BAD])
    with pytest.raises(DataError, match="share their first turns"):
        split_implicit_prompt([GOOD], [BAD])
