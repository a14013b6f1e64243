"""Collators: right padding, and packing several examples into one row with a block-diagonal mask."""

from __future__ import annotations

import torch


def pad_sequences(seqs: list[torch.Tensor], pad_id: int, side: str = "right") -> torch.Tensor:
    """Stack 1-D tensors into [B, max_len], padding with pad_id on `side`."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        if side == "right":
            out[i, : len(s)] = s
        else:
            out[i, width - len(s) :] = s
    return out


def loss_mask_for(length: int, prompt_len: int) -> torch.Tensor:
    mask = torch.zeros(length, dtype=torch.bool)
    mask[prompt_len:] = True
    return mask


class PadCollator:
    """Batch {input_ids, attention_mask, loss_mask}, all [B, S], right-padded."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        ids = [it["input_ids"] for it in items]
        masks = [torch.ones(len(s), dtype=torch.long) for s in ids]
        loss = [loss_mask_for(len(it["input_ids"]), it["prompt_len"]) for it in items]
        return {
            "input_ids": pad_sequences(ids, self.pad_id),
            "attention_mask": pad_sequences(masks, 0),
            "loss_mask": pad_sequences(loss, 0).bool(),
        }


def block_causal_mask(lengths: list[int] | torch.Tensor) -> torch.Tensor:
    """[1, 1, T, T] boolean: position i attends to j <= i within its own segment (T = sum of lengths)."""
    lengths = torch.as_tensor(lengths)
    segments = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    causal = torch.ones(len(segments), len(segments), dtype=torch.bool, device=lengths.device).tril()
    return (causal & (segments[:, None] == segments[None, :]))[None, None]


class PackCollator:
    """All examples of a micro-batch in one row [1, S]: position ids restart per example and attention is
    block-diagonal causal, so the loss equals the padded batch's loss on the same examples.

    With FlashAttention-2 (`four_d_mask=False`) the restarting position ids alone mark the boundaries.
    """

    def __init__(self, four_d_mask: bool = True) -> None:
        self.four_d_mask = four_d_mask

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        ids = torch.cat([it["input_ids"] for it in items])
        positions = torch.cat([torch.arange(len(it["input_ids"])) for it in items])
        loss = torch.cat([loss_mask_for(len(it["input_ids"]), max(it["prompt_len"], 1)) for it in items])
        batch = {"input_ids": ids[None], "position_ids": positions[None], "loss_mask": loss[None]}
        if self.four_d_mask:
            batch["attention_mask"] = block_causal_mask([len(it["input_ids"]) for it in items])
        else:
            batch["attention_mask"] = None
        return batch
