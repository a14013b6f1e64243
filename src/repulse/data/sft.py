"""The SFT dataset: prompt-masked (loss on the response only) or --pretrain_mode (loss on every token)."""

from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from repulse.data.templates import format_pair, split_conversation
from repulse.data.tokenize import encode_pair
from repulse.infra.errors import DataError

log = logging.getLogger("repulse")


class SFTDataset(Dataset):
    """Items are dicts {input_ids: LongTensor [S], prompt_len: int}; tokens at positions >= prompt_len are trained."""

    def __init__(
        self,
        rows,
        tokenizer,
        max_len: int,
        *,
        input_key: str = "input",
        output_key: str | None = "output",
        input_template: str | None = None,
        apply_chat_template: bool = False,
        pretrain_mode: bool = False,
    ) -> None:
        self.items: list[dict] = []
        skipped = 0
        for row in rows:
            prompt_text, response_text = self._texts(
                row, tokenizer, input_key, output_key, input_template, apply_chat_template, pretrain_mode
            )
            ids, prompt_len = encode_pair(tokenizer, prompt_text, response_text, max_len)
            if pretrain_mode:
                prompt_len = 0
            if len(ids) - prompt_len < 1 or len(ids) < 2:
                skipped += 1  # the prompt alone fills max_len: nothing left to train on
                continue
            self.items.append({"input_ids": torch.tensor(ids, dtype=torch.long), "prompt_len": prompt_len})
        if skipped:
            log.warning("SFT data: skipped %d examples whose prompt fills --max_len", skipped)
        if not self.items:
            raise DataError("SFT data: no usable examples (empty dataset, or every prompt longer than --max_len)")

    @staticmethod
    def _texts(row, tokenizer, input_key, output_key, input_template, chat, pretrain_mode) -> tuple[str, str]:
        if pretrain_mode:
            text = str(row[input_key]) + (str(row[output_key]) if output_key and output_key in row else "")
            return "", text
        if output_key is None or output_key not in row:
            if chat:
                history, reply = split_conversation(row[input_key])
                return format_pair(history, reply, tokenizer, chat=True)
            raise DataError(f"SFT data: missing response key {output_key!r} (set --output_key, or --pretrain_mode)")
        return format_pair(row[input_key], row[output_key], tokenizer, input_template=input_template, chat=chat)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]
