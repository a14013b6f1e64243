"""--packing_samples in train_rm / train_dpo / train_prm: a right-padded batch packed into one row for the forward
and put back (models/packing.py) gives the padded batch's log-probs, rewards and gradients.

Run in float64 on random GPT-2s so that "the same" can mean 1e-10.
"""

from __future__ import annotations

import pytest
import torch

from repulse.data.collate import pad_sequences
from repulse.models.logprobs import sequence_logps
from repulse.models.packing import pack_rows, unpack
from repulse.models.reward import sequence_rewards
from tests.conftest import make_gpt2

LENGTHS = [5, 9, 3, 7]  # rows of different lengths: the point of packing


def seen_shapes(model) -> list[tuple[int, ...]]:
    """The input_ids shapes of the model's forwards from now on (to prove the packed path ran)."""
    shapes: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda m, args, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    return shapes


def batch(vocab: int = 50) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(2, vocab, (n,), generator=gen) for n in LENGTHS]
    return {
        "input_ids": pad_sequences(seqs, 0),
        "attention_mask": pad_sequences([torch.ones(n, dtype=torch.long) for n in LENGTHS], 0),
        "prompt_lens": torch.tensor([2, 4, 1, 3]),
    }


def test_pack_rows_layout_and_unpack_round_trip():
    b = batch()
    packed = pack_rows(b["input_ids"], b["attention_mask"])
    total = sum(LENGTHS)
    assert packed.input_ids.shape == packed.position_ids.shape == (1, total)
    assert packed.input_ids[0].tolist() == [t for row, n in zip(b["input_ids"], LENGTHS) for t in row[:n].tolist()]
    assert packed.position_ids[0].tolist() == [p for n in LENGTHS for p in range(n)]
    assert packed.attention_mask.shape == (1, 1, total, total)
    # Row 1's first token attends to itself only, not to row 0's tokens.
    assert packed.attention_mask[0, 0, LENGTHS[0]].nonzero().flatten().tolist() == [LENGTHS[0]]
    back = unpack(packed.input_ids[..., None], packed.real)[..., 0]
    assert torch.equal(back, b["input_ids"])  # padding was 0, and unpack fills zeros
    assert pack_rows(b["input_ids"], b["attention_mask"], four_d_mask=False).attention_mask is None


def test_left_padded_rows_are_refused():
    b = batch()
    with pytest.raises(ValueError, match="right-padded"):
        pack_rows(b["input_ids"], b["attention_mask"].flip(1))


@pytest.fixture(scope="module")
def lm():
    return make_gpt2(50, seed=1).double().eval()


def test_packed_sequence_logps_and_gradients_equal_padded(lm):
    b = batch()
    out = {}
    shapes = seen_shapes(lm)
    for packing in (None, "4d"):
        lm.zero_grad()
        logps, counts, _ = sequence_logps(lm, b["input_ids"], b["attention_mask"], b["prompt_lens"], packing)
        logps.sum().backward()
        out[packing] = (logps.detach(), counts, [p.grad.clone() for p in lm.parameters()])
    (a, ca, ga), (p, cp, gp) = out[None], out["4d"]
    assert shapes == [(4, 9), (1, sum(LENGTHS))]
    assert torch.equal(ca, cp) and ca.tolist() == [n - k for n, k in zip(LENGTHS, [2, 4, 1, 3])]
    assert torch.allclose(a, p, atol=1e-10, rtol=0)
    assert all(torch.allclose(x, y, atol=1e-10, rtol=0) for x, y in zip(ga, gp, strict=True))


def test_packing_with_a_plain_causal_mask_would_differ(lm, monkeypatch):
    """The comparison above can fail: packed rows attending across their boundaries (a plain causal mask in place
    of the block-diagonal one) change the log-probs of every row but the first."""
    from repulse.models import packing

    b = batch()
    padded, _, _ = sequence_logps(lm, b["input_ids"], b["attention_mask"], b["prompt_lens"])
    monkeypatch.setattr(
        packing, "block_causal_mask", lambda n: torch.ones(sum(n), sum(n), dtype=bool).tril()[None, None]
    )
    leaky, _, _ = sequence_logps(lm, b["input_ids"], b["attention_mask"], b["prompt_lens"], "4d")
    assert torch.allclose(padded[0], leaky[0], atol=1e-10)
    assert not torch.allclose(padded[1:], leaky[1:], atol=1e-6)


def test_flash_mode_marks_boundaries_by_positions_alone(lm):
    """Under --flash_attn no mask is passed; transformers reads the restarting position ids as the boundaries
    (here with sdpa too), so the log-probs are the padded batch's."""
    b = batch()
    padded, _, _ = sequence_logps(lm, b["input_ids"], b["attention_mask"], b["prompt_lens"])
    flash, _, _ = sequence_logps(lm, b["input_ids"], b["attention_mask"], b["prompt_lens"], "flash")
    assert torch.allclose(padded, flash, atol=1e-10, rtol=0)


def test_packed_rewards_and_gradients_equal_padded():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(2)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=64, num_labels=1, pad_token_id=0)
    model = GPT2ForSequenceClassification(config).double().eval()
    b = batch()
    out = {}
    shapes = seen_shapes(model.transformer)
    for packing in (None, "4d"):
        model.zero_grad()
        rewards = sequence_rewards(model, b["input_ids"], b["attention_mask"], normalize=False, packing=packing)
        (rewards * torch.arange(1.0, 5.0, dtype=torch.float64)).sum().backward()
        out[packing] = (rewards.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert shapes == [(4, 9), (1, sum(LENGTHS))]
    assert torch.allclose(out[None][0], out["4d"][0], atol=1e-10, rtol=0)
    assert len(out[None][1]) == len(out["4d"][1]) > 0
    assert all(torch.allclose(x, y, atol=1e-10, rtol=0) for x, y in zip(out[None][1], out["4d"][1], strict=True))
