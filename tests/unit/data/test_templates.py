"""Prompt formatting: input templates, chat templates and their error messages."""

from __future__ import annotations

import pytest

from repulse.data.templates import as_messages, format_pair, format_prompt, split_conversation
from repulse.data.tokenize import encode_pair
from repulse.infra.errors import DataError
from tests.conftest import make_tokenizer

USER = {"role": "user", "content": "this man is"}


def test_plain_prompt_unchanged(tiny_tokenizer):
    assert format_prompt("this man is", tiny_tokenizer) == "this man is"


def test_input_template(tiny_tokenizer):
    assert format_prompt("hi", tiny_tokenizer, input_template="User: {}\nAssistant: ") == "User: hi\nAssistant: "


def test_chat_prompt_string_and_messages_agree(tiny_tokenizer):
    expected = "user: this man is\nassistant:"
    assert format_prompt("this man is", tiny_tokenizer, chat=True) == expected
    assert format_prompt([USER], tiny_tokenizer, chat=True) == expected


def test_chat_pair_concatenates_to_full_conversation(tiny_tokenizer):
    prompt, response = format_pair([USER], [{"role": "assistant", "content": "good"}], tiny_tokenizer, chat=True)
    assert prompt + response == "user: this man is\nassistant: good\n"


def test_messages_without_chat_flag(tiny_tokenizer):
    with pytest.raises(DataError, match="--apply_chat_template"):
        format_prompt([USER], tiny_tokenizer)


def test_tokenizer_without_chat_template():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(DataError) as exc:
        format_prompt("hi", tokenizer, chat=True)
    assert "--apply_chat_template" in str(exc.value)
    assert "--tokenizer_chat_template" in str(exc.value)


@pytest.mark.parametrize("bad", [42, [{"role": "user"}], ["hi"], None])
def test_bad_prompt_type(bad):
    with pytest.raises(DataError):
        as_messages(bad)


def test_non_string_response_without_chat(tiny_tokenizer):
    with pytest.raises(DataError, match="response"):
        format_pair("hi", 3, tiny_tokenizer)


def test_split_conversation():
    msgs = [USER, {"role": "assistant", "content": "good"}]
    assert split_conversation(msgs) == ([USER], "good")
    with pytest.raises(DataError):
        split_conversation([USER])
    with pytest.raises(DataError):
        split_conversation([{"role": "assistant", "content": "x"}])  # nothing before the reply


def test_encode_pair_adds_eos_once(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    ids, prompt_len = encode_pair(tiny_tokenizer, "the man", " is<eos>", 64)  # the text already ends in EOS
    assert ids == tiny_tokenizer.convert_tokens_to_ids(["the", "Ġman", "Ġis"]) + [eos]
    assert prompt_len == 2


def test_encode_pair_prompt_len_capped(tiny_tokenizer):
    ids, prompt_len = encode_pair(tiny_tokenizer, "this man is very tall", " .", 3)
    assert len(ids) == 3
    assert prompt_len == 3
