"""PreferenceDataset + PairCollator: chosen rows first, then rejected, in one right-padded batch."""

from __future__ import annotations

import pytest
import torch

from repulse.data.preference import PairCollator, PreferenceDataset
from repulse.infra.errors import DataError

ROWS = [
    # chosen  : this Ġman Ġis Ġa | Ġgood Ġ. <eos>            (7 tokens, prompt 4)
    # rejected: this Ġman Ġis Ġa | Ġjerk Ġfool Ġ. <eos>      (8 tokens)
    {"prompt": "this man is a", "chosen": " good .", "rejected": " jerk fool .", "m": 2},
    # chosen  : the Ġwoman | Ġis Ġso Ġkind <eos>              (6 tokens, prompt 2)
    # rejected: the Ġwoman | Ġis Ġa Ġfool <eos>               (6 tokens)
    {"prompt": "the woman", "chosen": " is so kind", "rejected": " is a fool", "m": 0.5},
]


def tok_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(text.split()) + [tokenizer.eos_token_id]


def test_items(tiny_tokenizer):
    ds = PreferenceDataset(ROWS, tiny_tokenizer, 64, margin_key="m")
    assert len(ds) == 2
    first = ds[0]
    assert first["chosen_ids"].tolist() == tok_ids(tiny_tokenizer, "this Ġman Ġis Ġa Ġgood Ġ.")
    assert first["rejected_ids"].tolist() == tok_ids(tiny_tokenizer, "this Ġman Ġis Ġa Ġjerk Ġfool Ġ.")
    assert first["prompt_len"] == 4
    assert first["margin"] == 2.0 and isinstance(first["margin"], float)
    assert ds[1]["prompt_len"] == 2


def test_pair_collator_layout(tiny_tokenizer):
    ds = PreferenceDataset(ROWS, tiny_tokenizer, 64, margin_key="m")
    batch = PairCollator(tiny_tokenizer.pad_token_id)([ds[0], ds[1]])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (4, 8)  # 2 chosen + 2 rejected rows, width of the longest (8)
    expected_rows = [ds[0]["chosen_ids"], ds[1]["chosen_ids"], ds[0]["rejected_ids"], ds[1]["rejected_ids"]]
    pad = tiny_tokenizer.pad_token_id
    for row, expected in zip(range(4), expected_rows, strict=True):
        n = len(expected)
        assert ids[row, :n].tolist() == expected.tolist()
        assert (ids[row, n:] == pad).all()
        assert mask[row].tolist() == [1] * n + [0] * (8 - n)
    assert batch["prompt_lens"].tolist() == [4, 2, 4, 2]
    assert batch["margin"].tolist() == [2.0, 0.5]
    assert batch["margin"].dtype == torch.float32


def test_no_margin_key_gives_zero_margins(tiny_tokenizer):
    ds = PreferenceDataset(ROWS, tiny_tokenizer, 64)
    assert PairCollator(0)([ds[0], ds[1]])["margin"].tolist() == [0.0, 0.0]


def test_without_prompt_key_whole_texts(tiny_tokenizer):
    rows = [{"chosen": "the man is good", "rejected": "the man is a jerk"}]
    item = PreferenceDataset(rows, tiny_tokenizer, 64, prompt_key=None)[0]
    assert item["prompt_len"] == 0
    assert item["chosen_ids"].tolist() == tok_ids(tiny_tokenizer, "the Ġman Ġis Ġgood")
    assert item["rejected_ids"].tolist() == tok_ids(tiny_tokenizer, "the Ġman Ġis Ġa Ġjerk")


def test_custom_keys_and_input_template(tiny_tokenizer):
    rows = [{"q": "man is", "good": " kind", "bad": " a fool"}]
    item = PreferenceDataset(
        rows, tiny_tokenizer, 64, prompt_key="q", chosen_key="good", rejected_key="bad", input_template="the {}"
    )[0]
    # "the {}" -> "the man is": prompt of 3 tokens, shared by both responses.
    assert item["prompt_len"] == 3
    assert item["chosen_ids"].tolist() == tok_ids(tiny_tokenizer, "the Ġman Ġis Ġkind")
    assert item["rejected_ids"].tolist() == tok_ids(tiny_tokenizer, "the Ġman Ġis Ġa Ġfool")


def test_truncation(tiny_tokenizer):
    item = PreferenceDataset(ROWS[:1], tiny_tokenizer, 5)[0]
    assert item["chosen_ids"].tolist() == tok_ids(tiny_tokenizer, "this Ġman Ġis Ġa Ġgood Ġ.")[:5]
    assert item["rejected_ids"].tolist() == tok_ids(tiny_tokenizer, "this Ġman Ġis Ġa Ġjerk Ġfool Ġ.")[:5]


def test_chat_template(tiny_tokenizer):
    item = PreferenceDataset(ROWS[:1], tiny_tokenizer, 64, apply_chat_template=True)[0]
    prompt = "user: this man is a\nassistant:"
    prompt_ids = tiny_tokenizer(prompt)["input_ids"]
    assert item["prompt_len"] == len(prompt_ids)
    assert item["chosen_ids"][: len(prompt_ids)].tolist() == prompt_ids
    assert item["rejected_ids"][: len(prompt_ids)].tolist() == prompt_ids
    chosen_full = tiny_tokenizer(prompt + "  good .\n")["input_ids"] + [tiny_tokenizer.eos_token_id]
    assert item["chosen_ids"].tolist() == chosen_full


def test_chat_template_needs_prompt_key(tiny_tokenizer):
    rows = [{"chosen": "the man is good", "rejected": "the man is a jerk"}]
    with pytest.raises(DataError, match="--prompt_key"):
        PreferenceDataset(rows, tiny_tokenizer, 64, prompt_key=None, apply_chat_template=True)


def test_empty(tiny_tokenizer):
    with pytest.raises(DataError):
        PreferenceDataset([], tiny_tokenizer, 64)
