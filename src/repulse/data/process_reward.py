"""Process-reward data: texts with a step-marker token after each step and one label per step."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from repulse.data.collate import pad_sequences
from repulse.infra.errors import DataError


def single_token_id(tokenizer, text: str, flag: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise DataError(f"{flag} {text!r} must be one token of the tokenizer (it is {len(ids)}: {ids})")
    return ids[0]


def marker_ids(tokenizer, placeholder: str) -> list[int]:
    """Ids the step marker takes: alone and, for tokenizers with leading-space words, after a space."""
    ids = {single_token_id(tokenizer, placeholder, "--placeholder_token")}
    spaced = tokenizer(" " + placeholder, add_special_tokens=False)["input_ids"]
    if len(spaced) == 1:
        ids.add(spaced[0])
    return sorted(ids)


def label_distribution(label, reward_tokens: list[str], key: str) -> list[float]:
    """A hard label (one of reward_tokens) as one-hot, or a soft label p as [p, 1 - p] (two reward tokens)."""
    if isinstance(label, str) and label in reward_tokens:
        return [1.0 if t == label else 0.0 for t in reward_tokens]
    try:
        p = float(label)
    except (TypeError, ValueError) as err:
        raise DataError(f"--label_key {key}: label {label!r} is neither one of {reward_tokens} nor a number") from err
    if len(reward_tokens) != 2 or not 0.0 <= p <= 1.0:
        raise DataError(f"--label_key {key}: soft label {p} needs two --reward_tokens and a value in [0, 1]")
    return [p, 1.0 - p]


class ProcessRewardDataset(Dataset):
    """Items {input_ids [S], markers [S] bool, targets [M, K]} with M = markers kept after truncation."""

    def __init__(
        self,
        rows,
        tokenizer,
        max_len: int,
        *,
        input_key: str,
        label_key: str,
        placeholder_token: str,
        reward_tokens: list[str],
        input_template: str | None = None,
    ) -> None:
        self.marker_ids = torch.tensor(marker_ids(tokenizer, placeholder_token))
        self.label_ids = torch.tensor([single_token_id(tokenizer, t, "--reward_tokens") for t in reward_tokens])
        self.items: list[dict] = []
        for row in rows:
            text = input_template.format(row[input_key]) if input_template else row[input_key]
            ids = torch.tensor(tokenizer(text, add_special_tokens=True)["input_ids"][:max_len], dtype=torch.long)
            labels = row[label_key] if isinstance(row[label_key], list) else [row[label_key]]
            markers = torch.isin(ids, self.marker_ids)
            n_total = text.count(placeholder_token)
            if n_total != len(labels):
                raise DataError(
                    f"process-reward row has {n_total} {placeholder_token!r} markers but {len(labels)} labels"
                )
            kept = int(markers.sum())
            if kept == 0:
                continue
            targets = [label_distribution(lab, reward_tokens, label_key) for lab in labels[:kept]]
            self.items.append({"input_ids": ids, "markers": markers, "targets": torch.tensor(targets)})
        if not self.items:
            raise DataError("process-reward data: no example keeps a step marker within --max_len")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class ProcessRewardCollator:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        ids = [it["input_ids"] for it in items]
        return {
            "input_ids": pad_sequences(ids, self.pad_id),
            "attention_mask": pad_sequences([torch.ones(len(i), dtype=torch.long) for i in ids], 0),
            "markers": pad_sequences([it["markers"] for it in items], 0).bool(),
            "targets": torch.cat([it["targets"] for it in items]),
        }
