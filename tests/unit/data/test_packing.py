"""--packing_samples: PackCollator's one-row batch gives the same loss and logits as PadCollator's padded batch.

Run in float64 on a random GPT-2 so that "the same" can mean 1e-10.
"""

from __future__ import annotations

import pytest
import torch

from repulse.data.collate import PackCollator, PadCollator
from repulse.data.sft import SFTDataset
from repulse.losses.lm import lm_loss
from tests.conftest import make_gpt2

ROWS = [
    {"input": "this man is", "output": " very good ."},  # 7 tokens, prompt 3
    {"input": "the woman", "output": " is so so very kind ."},  # 9 tokens, prompt 2
    {"input": "the", "output": " fool"},  # 3 tokens, prompt 1
    {"input": "a tall man is a", "output": " jerk"},  # 7 tokens, prompt 5
]


def build_model(tokenizer, attn_implementation: str):
    gpt2 = make_gpt2(len(tokenizer), seed=1).double().eval()
    gpt2.set_attn_implementation(attn_implementation)
    return gpt2


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    """sdpa: what repulse.models.load asks for unless --flash_attn."""
    return build_model(tiny_tokenizer, "sdpa")


def items(tokenizer, pretrain_mode: bool) -> list[dict]:
    ds = SFTDataset(ROWS, tokenizer, 64, pretrain_mode=pretrain_mode)
    lengths = [len(it["input_ids"]) for it in ds]
    assert len(set(lengths)) > 1  # the point is different lengths
    return list(ds)


def padded_logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits


def packed_logits(model, batch):
    """Through forward_logits, as the SFT trainer does (it turns the boolean 4-D mask into additive scores)."""
    from repulse.models.logprobs import forward_logits

    with torch.no_grad():
        return forward_logits(model, batch["input_ids"], batch["attention_mask"], position_ids=batch["position_ids"])


def test_pack_collator_layout(tiny_tokenizer):
    its = items(tiny_tokenizer, pretrain_mode=False)
    batch = PackCollator()(its)
    lengths = [len(it["input_ids"]) for it in its]  # 7, 9, 3, 7
    total = sum(lengths)
    assert batch["input_ids"].shape == batch["position_ids"].shape == batch["loss_mask"].shape == (1, total)
    assert batch["input_ids"][0].tolist() == torch.cat([it["input_ids"] for it in its]).tolist()
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    # Prompts 3, 2, 1, 5 tokens are masked inside each segment.
    expected_loss = [pos >= it["prompt_len"] for it in its for pos in range(len(it["input_ids"]))]
    assert batch["loss_mask"][0].tolist() == expected_loss
    mask = batch["attention_mask"]
    assert mask.shape == (1, 1, total, total) and mask.dtype == torch.bool
    # Block-diagonal causal: token j of segment s attends to tokens 0..j of the same segment only.
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    for s, (start, n) in enumerate(zip(starts, lengths, strict=True)):
        for j in range(n):
            row = mask[0, 0, start + j]
            assert row.nonzero().flatten().tolist() == list(range(start, start + j + 1)), (s, j)


def test_pack_collator_pretrain_mode_masks_each_segment_start(tiny_tokenizer):
    # In --pretrain_mode prompt_len is 0, but the first token of a segment must not be "predicted" from the
    # previous segment's last token: its loss mask is False, every other token's is True.
    its = items(tiny_tokenizer, pretrain_mode=True)
    loss = PackCollator()(its)["loss_mask"][0].tolist()
    assert loss == [pos >= 1 for it in its for pos in range(len(it["input_ids"]))]


def test_pack_collator_without_4d_mask(tiny_tokenizer):
    batch = PackCollator(four_d_mask=False)(items(tiny_tokenizer, pretrain_mode=False))
    assert batch["attention_mask"] is None
    assert batch["position_ids"][0, 0] == 0


@pytest.mark.parametrize("pretrain_mode", [False, True])
def test_packed_loss_equals_padded_loss(model, tiny_tokenizer, pretrain_mode):
    its = items(tiny_tokenizer, pretrain_mode)
    pad = PadCollator(tiny_tokenizer.pad_token_id)(its)
    pack = PackCollator()(its)
    loss_pad = lm_loss(padded_logits(model, pad), pad["input_ids"], pad["loss_mask"])
    loss_pack = lm_loss(packed_logits(model, pack), pack["input_ids"], pack["loss_mask"])
    # Same number of trained tokens: response + EOS per item (all but the first token in pretrain mode).
    trained = sum(len(it["input_ids"]) - max(it["prompt_len"], 1) for it in its)
    assert int(pad["loss_mask"][:, 1:].sum()) == int(pack["loss_mask"][:, 1:].sum()) == trained
    assert torch.isfinite(loss_pad)
    assert abs(loss_pad.item() - loss_pack.item()) < 1e-10


def test_packed_segment_logits_equal_unpacked_rows(model, tiny_tokenizer):
    its = items(tiny_tokenizer, pretrain_mode=False)
    pad = PadCollator(tiny_tokenizer.pad_token_id)(its)
    pack = PackCollator()(its)
    padded, packed = padded_logits(model, pad), packed_logits(model, pack)
    assert packed.dtype == torch.float64
    offset = 0
    for row, it in enumerate(its):
        n = len(it["input_ids"])
        segment = packed[0, offset : offset + n]
        assert torch.allclose(segment, padded[row, :n], atol=1e-10, rtol=0), row
        # And each also equals the example run alone, with no batch around it.
        with torch.no_grad():
            alone = model(input_ids=it["input_ids"][None], use_cache=False).logits[0]
        assert torch.allclose(segment, alone, atol=1e-10, rtol=0), row
        offset += n


def test_packing_without_block_mask_would_differ(model, tiny_tokenizer):
    """Sanity check that the comparisons above can fail: a plain causal mask over the packed row leaks."""
    its = items(tiny_tokenizer, pretrain_mode=False)
    pack = PackCollator()(its)
    total = pack["input_ids"].shape[1]
    plain_causal = torch.ones(total, total, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        leaky = model(
            input_ids=pack["input_ids"],
            attention_mask=plain_causal,
            position_ids=pack["position_ids"],
            use_cache=False,
        ).logits
    n0 = len(its[0]["input_ids"])
    correct = packed_logits(model, pack)
    assert torch.allclose(leaky[0, :n0], correct[0, :n0], atol=1e-10)  # the first segment sees nothing extra
    assert not torch.allclose(leaky[0, n0:], correct[0, n0:], atol=1e-6)


def packed_loss_gap(model, tokenizer, collator) -> float:
    its = items(tokenizer, pretrain_mode=False)
    pad = PadCollator(tokenizer.pad_token_id)(its)
    pack = collator(its)
    loss_pad = lm_loss(padded_logits(model, pad), pad["input_ids"], pad["loss_mask"])
    loss_pack = lm_loss(packed_logits(model, pack), pack["input_ids"], pack["loss_mask"])
    return abs(loss_pad.item() - loss_pack.item())


def test_position_ids_alone_also_pack_correctly_under_sdpa(model, tiny_tokenizer):
    # four_d_mask=False (meant for FlashAttention-2): with no mask and no cache, transformers derives the
    # segments from the restarting position ids, so the loss still equals the padded one.
    assert packed_loss_gap(model, tiny_tokenizer, PackCollator(four_d_mask=False)) < 1e-10


def test_packed_loss_equals_padded_loss_eager(tiny_tokenizer):
    assert packed_loss_gap(build_model(tiny_tokenizer, "eager"), tiny_tokenizer, PackCollator()) < 1e-10
