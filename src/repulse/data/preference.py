"""Preference pairs (prompt, chosen, rejected) for reward models and DPO.

Besides explicit prompts, TRL's implicit-prompt format is read: without a prompt key, chosen and rejected hold
whole conversations (their shared turns are the prompt) or whole texts (trained as they are; a shared start
cancels in every pairwise loss).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from repulse.data.collate import pad_sequences
from repulse.data.templates import format_pair, split_implicit_prompt
from repulse.data.tokenize import encode_pair
from repulse.infra.errors import DataError

if TYPE_CHECKING:
    from repulse.config.common import DataArgs

log = logging.getLogger("repulse")


class PreferenceDataset(Dataset):
    """Items {chosen_ids, rejected_ids: LongTensor, prompt_len: int, margin: float}."""

    def __init__(
        self,
        rows,
        tokenizer,
        max_len: int,
        *,
        prompt_key: str | None = "prompt",
        chosen_key: str = "chosen",
        rejected_key: str = "rejected",
        margin_key: str | None = None,
        input_template: str | None = None,
        apply_chat_template: bool = False,
    ) -> None:
        self.items: list[dict] = []
        for row in rows:
            prompt, chosen, rejected = row[prompt_key] if prompt_key else "", row[chosen_key], row[rejected_key]
            # Conversations ({role, content} lists) become text through the chat template, as in TRL.
            chat = apply_chat_template or not isinstance(chosen, str)
            if not prompt_key and not isinstance(chosen, str):
                prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
            elif chat and not prompt_key:
                raise DataError("--apply_chat_template on preference data needs --prompt_key")
            chosen_p, chosen_r = format_pair(prompt, chosen, tokenizer, input_template=input_template, chat=chat)
            _, rejected_r = format_pair(prompt, rejected, tokenizer, input_template=input_template, chat=chat)
            chosen_ids, prompt_len = encode_pair(tokenizer, chosen_p, chosen_r, max_len)
            rejected_ids, _ = encode_pair(tokenizer, chosen_p, rejected_r, max_len)
            margin = float(row[margin_key]) if margin_key else 0.0
            self.items.append(
                {
                    "chosen_ids": torch.tensor(chosen_ids, dtype=torch.long),
                    "rejected_ids": torch.tensor(rejected_ids, dtype=torch.long),
                    "prompt_len": prompt_len,
                    "margin": margin,
                }
            )
        if not self.items:
            raise DataError("preference data: no examples")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class PairCollator:
    """Chosen rows then rejected rows in one right-padded batch [2B, S], so one forward scores both."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        seqs = [it["chosen_ids"] for it in items] + [it["rejected_ids"] for it in items]
        masks = [torch.ones(len(s), dtype=torch.long) for s in seqs]
        return {
            "input_ids": pad_sequences(seqs, self.pad_id),
            "attention_mask": pad_sequences(masks, 0),
            "prompt_lens": torch.tensor([it["prompt_len"] for it in items] * 2),
            "margin": torch.tensor([it["margin"] for it in items], dtype=torch.float32),
        }


def build_preference_datasets(data_args: DataArgs, keys, tokenizer, *, seed: int):
    """(train, eval or None) PreferenceDatasets from DataArgs and PreferenceKeys; embedded pairs by default."""
    from repulse.data.loading import load_rows, source_columns

    columns = source_columns(data_args)
    if columns is not None and keys.prompt_key == "prompt" and "prompt" not in columns:
        log.info("preference data: no 'prompt' key: chosen/rejected hold whole conversations (TRL's implicit prompt)")
        keys = dataclasses.replace(keys, prompt_key=None)
    kwargs = dict(
        **keys.dataset_kwargs(),
        input_template=data_args.input_template,
        apply_chat_template=data_args.apply_chat_template,
    )
    rows = load_rows(data_args, keys.columns(), "preference", seed=seed)
    train = PreferenceDataset(rows, tokenizer, data_args.max_len, **kwargs)
    eval_rows = load_rows(data_args, keys.columns(), None, seed=seed, eval_split=True)
    evaluation = (
        PreferenceDataset(eval_rows, tokenizer, data_args.max_len, **kwargs) if eval_rows is not None else None
    )
    return train, evaluation
