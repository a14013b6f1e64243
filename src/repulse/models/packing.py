"""--packing_samples for the commands whose trainers read padded rows (train_rm, train_dpo, train_prm): the
right-padded batch is packed into one row for the forward pass only, and the per-token outputs are put back in
the padded layout, so every loss reads the same tensors as without packing.

One row holds the real tokens of all rows, positions restarting per row. Attention is block-diagonal causal (a
boolean 4-D mask), or, with FlashAttention-2, no mask: transformers reads the restarting position ids as the
boundaries. No padding token is computed, which is what packing buys on a GPU with varied lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from repulse.data.collate import block_causal_mask


@dataclass(frozen=True)
class PackedRows:
    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T]
    attention_mask: torch.Tensor | None  # [1, 1, T, T] boolean, or None under FlashAttention-2
    real: torch.Tensor  # [B, S] boolean: the padded batch's real tokens, in the packed row's order (row-major)


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, four_d_mask: bool = True) -> PackedRows:
    """A right-padded batch [B, S] (attention_mask 1 on real tokens) as one row."""
    real = attention_mask.bool()
    lengths = real.sum(1)
    if not torch.equal(real, torch.arange(real.shape[1], device=real.device)[None] < lengths[:, None]):
        raise ValueError("pack_rows: rows must be right-padded (real tokens first)")
    positions = torch.cat([torch.arange(int(n), device=input_ids.device) for n in lengths])
    mask = block_causal_mask(lengths) if four_d_mask else None
    return PackedRows(input_ids[real][None], positions[None], mask, real)


def unpack(values: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per-token values of the packed row [1, T, ...] in the padded layout [B, S, ...], zeros at padding."""
    out = values.new_zeros((*real.shape, *values.shape[2:]))
    out[real] = values[0]
    return out
