"""SFTDataset + PadCollator: which tokens are trained, templates, conversations, truncation and skipping.

Token ids are never hard-coded: expected ids come from hand-written token strings of the word-level test
tokenizer (a leading space is 'Ġ'), e.g. "this man is" -> ["this", "Ġman", "Ġis"].
"""

from __future__ import annotations

import pytest
import torch

from repulse.data.collate import PadCollator
from repulse.data.sft import SFTDataset
from repulse.data.templates import format_pair
from repulse.infra.errors import DataError
from tests.conftest import make_tokenizer

ROW = {"input": "this man is", "output": " very good ."}
ROW_TOKENS = ["this", "Ġman", "Ġis", "Ġvery", "Ġgood", "Ġ.", "<eos>"]  # prompt = the first 3


def ids(tokenizer, tokens: list[str]) -> list[int]:
    out = tokenizer.convert_tokens_to_ids(tokens)
    assert tokenizer.unk_token_id not in out or "<unk>" in tokens
    return out


def test_prompt_and_response_ids(tiny_tokenizer):
    item = SFTDataset([ROW], tiny_tokenizer, 64)[0]
    assert item["input_ids"].tolist() == ids(tiny_tokenizer, ROW_TOKENS)
    assert item["input_ids"].dtype == torch.long
    assert item["prompt_len"] == 3


def test_pad_collator_masks_prompt_and_padding(tiny_tokenizer):
    rows = [ROW, {"input": "the", "output": " fool"}]  # second: ["the", "Ġfool", "<eos>"], prompt 1
    batch = PadCollator(tiny_tokenizer.pad_token_id)(list(SFTDataset(rows, tiny_tokenizer, 64)))
    assert batch["input_ids"].shape == (2, 7)
    pad = tiny_tokenizer.pad_token_id
    assert batch["input_ids"][1].tolist() == ids(tiny_tokenizer, ["the", "Ġfool", "<eos>"]) + [pad] * 4
    assert batch["attention_mask"].tolist() == [[1] * 7, [1, 1, 1, 0, 0, 0, 0]]
    F, T = False, True
    # Row 0: prompt "this man is" masked; " very good ." and EOS trained.
    # Row 1: prompt "the" masked; " fool" and EOS trained; padding masked.
    assert batch["loss_mask"].tolist() == [[F, F, F, T, T, T, T], [F, T, T, F, F, F, F]]
    assert batch["loss_mask"].dtype == torch.bool


def test_pretrain_mode_trains_every_token(tiny_tokenizer):
    item = SFTDataset([ROW], tiny_tokenizer, 64, pretrain_mode=True)[0]
    assert item["input_ids"].tolist() == ids(tiny_tokenizer, ROW_TOKENS)  # input + output, one text
    assert item["prompt_len"] == 0
    batch = PadCollator(tiny_tokenizer.pad_token_id)([item])
    assert batch["loss_mask"].all()


def test_pretrain_mode_without_output_column(tiny_tokenizer):
    rows = [{"input": "the man is so tall ."}]
    item = SFTDataset(rows, tiny_tokenizer, 64, output_key=None, pretrain_mode=True)[0]
    assert item["input_ids"].tolist() == ids(tiny_tokenizer, ["the", "Ġman", "Ġis", "Ġso", "Ġtall", "Ġ.", "<eos>"])
    assert item["prompt_len"] == 0


def test_input_template(tiny_tokenizer):
    # "the {} so" around "this man is" -> "the this man is so"; the template belongs to the prompt.
    item = SFTDataset([ROW], tiny_tokenizer, 64, input_template="the {} so")[0]
    expected = ["the", "Ġthis", "Ġman", "Ġis", "Ġso", "Ġvery", "Ġgood", "Ġ.", "<eos>"]
    assert item["input_ids"].tolist() == ids(tiny_tokenizer, expected)
    assert item["prompt_len"] == 5


def chat_prompt(*turns: tuple[str, str]) -> str:
    """The test tokenizer's chat template, written out by hand: 'role: content\\n' per turn, then 'assistant:'."""
    return "".join(f"{role}: {content}\n" for role, content in turns) + "assistant:"


def test_chat_template(tiny_tokenizer):
    item = SFTDataset([ROW], tiny_tokenizer, 64, apply_chat_template=True)[0]
    prompt = chat_prompt(("user", "this man is"))
    # Full text = "...assistant: " + content + "\n"; content already starts with a space.
    full = prompt + "  very good .\n"
    prompt_ids = tiny_tokenizer(prompt)["input_ids"]
    assert item["prompt_len"] == len(prompt_ids)
    assert item["input_ids"].tolist() == tiny_tokenizer(full)["input_ids"] + [tiny_tokenizer.eos_token_id]
    assert item["input_ids"][: item["prompt_len"]].tolist() == prompt_ids


def test_chat_prompt_text_ends_with_generation_prompt(tiny_tokenizer):
    prompt_text, response_text = format_pair("this man is", " very good .", tiny_tokenizer, chat=True)
    assert prompt_text == "user: this man is\nassistant:"
    assert response_text == "  very good .\n"


def test_chat_template_that_rewrites_the_prompt_falls_back_to_raw_content():
    # The generation prompt " so" is not a prefix of the full conversation text, so the pair is
    # (prompt with generation prompt, raw content): "this man is . so" + " very good".
    tokenizer = make_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }} .{% endfor %}{% if add_generation_prompt %} so{% endif %}"
    )
    item = SFTDataset([{"input": "this man is", "output": " very good"}], tokenizer, 64, apply_chat_template=True)[0]
    expected = ["this", "Ġman", "Ġis", "Ġ.", "Ġso", "Ġvery", "Ġgood", "<eos>"]
    assert item["input_ids"].tolist() == ids(tokenizer, expected)
    assert item["prompt_len"] == 5


def test_conversation_rows(tiny_tokenizer):
    conversation = [
        {"role": "user", "content": "this man is"},
        {"role": "assistant", "content": "very good ."},
        {"role": "user", "content": "the woman is"},
        {"role": "assistant", "content": "so kind ."},
    ]
    ds = SFTDataset([{"input": conversation}], tiny_tokenizer, 64, output_key=None, apply_chat_template=True)
    item = ds[0]
    # Everything up to the last assistant turn is prompt; only "so kind ." (+ newline, EOS) is trained.
    prompt = chat_prompt(("user", "this man is"), ("assistant", "very good ."), ("user", "the woman is"))
    assert item["prompt_len"] == len(tiny_tokenizer(prompt)["input_ids"])
    trained = item["input_ids"][item["prompt_len"] :].tolist()
    assert trained == tiny_tokenizer(" so kind .\n")["input_ids"] + [tiny_tokenizer.eos_token_id]


def test_conversation_with_missing_output_key_column(tiny_tokenizer):
    # output_key is set, but the row has no such column: a chat row is read as a whole conversation.
    conversation = [{"role": "user", "content": "this man is"}, {"role": "assistant", "content": "good ."}]
    item = SFTDataset([{"input": conversation}], tiny_tokenizer, 64, apply_chat_template=True)[0]
    assert item["prompt_len"] == len(tiny_tokenizer(chat_prompt(("user", "this man is")))["input_ids"])


def test_conversation_must_end_with_assistant(tiny_tokenizer):
    conversation = [{"role": "user", "content": "this man is"}]
    with pytest.raises(DataError, match="assistant"):
        SFTDataset([{"input": conversation}], tiny_tokenizer, 64, output_key=None, apply_chat_template=True)


def test_missing_response_without_chat(tiny_tokenizer):
    with pytest.raises(DataError, match="--output_key"):
        SFTDataset([{"input": "this man is"}], tiny_tokenizer, 64, output_key=None)


def test_truncation_to_max_len(tiny_tokenizer):
    item = SFTDataset([ROW], tiny_tokenizer, 5)[0]
    assert item["input_ids"].tolist() == ids(tiny_tokenizer, ROW_TOKENS[:5])  # EOS cut off
    assert item["prompt_len"] == 3


def test_prompt_filling_max_len_is_skipped(tiny_tokenizer):
    rows = [ROW, {"input": "the", "output": " fool"}]
    ds = SFTDataset(rows, tiny_tokenizer, 3)  # ROW's prompt is exactly 3 tokens: nothing left to train
    assert len(ds) == 1
    assert ds[0]["input_ids"].tolist() == ids(tiny_tokenizer, ["the", "Ġfool", "<eos>"])


def test_longer_prompt_is_skipped_and_prompt_len_capped(tiny_tokenizer):
    rows = [{"input": "this man is very very tall", "output": " ."}, {"input": "the", "output": " fool"}]
    ds = SFTDataset(rows, tiny_tokenizer, 4)
    assert len(ds) == 1
    assert ds[0]["prompt_len"] == 1


def test_all_examples_skipped(tiny_tokenizer):
    with pytest.raises(DataError, match="--max_len"):
        SFTDataset([ROW, ROW], tiny_tokenizer, 2)


def test_no_rows(tiny_tokenizer):
    with pytest.raises(DataError):
        SFTDataset([], tiny_tokenizer, 64)


def test_pretrain_mode_single_token_is_skipped(tiny_tokenizer):
    # "" -> only EOS: one token, no next-token pair to train on.
    rows = [{"input": ""}, {"input": "the man"}]
    ds = SFTDataset(rows, tiny_tokenizer, 64, output_key=None, pretrain_mode=True)
    assert len(ds) == 1


def test_chat_prompt_is_formatted_with_the_chat_template_as_if_asked(tiny_tokenizer):
    # A list of messages only becomes text through the chat template (as in TRL), flag or not.
    rows = [{"input": [{"role": "user", "content": "this man is"}], "output": " good ."}]
    auto = SFTDataset(rows, tiny_tokenizer, 64)[0]
    asked = SFTDataset(rows, tiny_tokenizer, 64, apply_chat_template=True)[0]
    assert auto["input_ids"].tolist() == asked["input_ids"].tolist() and auto["prompt_len"] == asked["prompt_len"]


def test_tokenizer_without_chat_template():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(DataError, match="chat template"):
        SFTDataset([ROW], tokenizer, 64, apply_chat_template=True)
