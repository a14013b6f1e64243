"""Unpaired examples with a desirable/undesirable label (KTO), and the mismatched pairs for its KL estimate."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from repulse.data.collate import pad_sequences
from repulse.data.templates import format_pair
from repulse.data.tokenize import encode_pair
from repulse.infra.errors import DataError

TRUE_LABELS = {"true", "1", "yes", "desirable", "good"}
FALSE_LABELS = {"false", "0", "no", "undesirable", "bad"}


def parse_label(value, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_LABELS or text in FALSE_LABELS:
        return text in TRUE_LABELS
    raise DataError(f"--label_key {key}: cannot read {value!r} as desirable/undesirable (use true/false or 1/0)")


class UnpairedDataset(Dataset):
    """Items {prompt_ids, response_ids: LongTensor, desirable: bool}."""

    def __init__(
        self,
        rows,
        tokenizer,
        max_len: int,
        *,
        input_key: str,
        output_key: str,
        label_key: str,
        input_template: str | None = None,
        apply_chat_template: bool = False,
    ) -> None:
        self.items: list[dict] = []
        for row in rows:
            prompt, response = format_pair(
                row[input_key], row[output_key], tokenizer, input_template=input_template, chat=apply_chat_template
            )
            ids, prompt_len = encode_pair(tokenizer, prompt, response, max_len)
            if prompt_len >= len(ids):
                continue
            self.items.append(
                {
                    "prompt_ids": torch.tensor(ids[:prompt_len], dtype=torch.long),
                    "response_ids": torch.tensor(ids[prompt_len:], dtype=torch.long),
                    "desirable": parse_label(row[label_key], label_key),
                }
            )
        if not self.items:
            raise DataError("KTO data: no usable examples")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class UnpairedCollator:
    """[2B, S]: the B real (prompt_i, response_i) rows, then B mismatched (prompt_i, response_{i+1 mod B}) rows
    used only for the KL reference point (as in the KTO paper)."""

    def __init__(self, pad_id: int, max_len: int) -> None:
        self.pad_id = pad_id
        self.max_len = max_len

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        n = len(items)
        pairs = [(it["prompt_ids"], it["response_ids"]) for it in items]
        pairs += [(items[i]["prompt_ids"], items[(i + 1) % n]["response_ids"]) for i in range(n)]
        seqs = [torch.cat([p, r])[: self.max_len] for p, r in pairs]
        masks = [torch.ones(len(s), dtype=torch.long) for s in seqs]
        return {
            "input_ids": pad_sequences(seqs, self.pad_id),
            "attention_mask": pad_sequences(masks, 0),
            "prompt_lens": torch.tensor([len(p) for p, _ in pairs]),
            "desirable": torch.tensor([it["desirable"] for it in items]),
        }
