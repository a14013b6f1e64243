"""Sampling N responses per prompt and scoring their tokens under any model (always in eval mode).

Rows are contiguous per prompt (rows [p*N, (p+1)*N) share prompt p), the layout every group-wise estimator
(RLOO baselines, self-normalised weights) relies on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from repulse.generation.generate import SamplingParams, generate
from repulse.losses.lm import token_log_probs
from repulse.models.logprobs import forward_logits, logits_kwarg, position_ids_from_mask


@dataclass
class Rollout:
    """sequences [B, S] (left-padded prompt, then response), attention_mask [B, S], action_mask [B, T]
    (valid response tokens, EOS included), prompts / responses: the texts per row, group_size N, and logps [B, T]:
    the sampling model's log-probs of the response tokens as it drew them (0 at padding; None if not recorded)."""

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    prompts: list[str]
    responses: list[str]
    group_size: int
    logps: torch.Tensor | None = None

    @property
    def num_actions(self) -> int:
        return self.action_mask.shape[1]

    @property
    def actions(self) -> torch.Tensor:
        return self.sequences[:, -self.num_actions :]

    def rows(self, start: int, stop: int) -> Rollout:
        return Rollout(
            self.sequences[start:stop],
            self.attention_mask[start:stop],
            self.action_mask[start:stop],
            self.prompts[start:stop],
            self.responses[start:stop],
            self.group_size,
            None if self.logps is None else self.logps[start:stop],
        )

    def select(self, index: torch.Tensor) -> Rollout:
        """Rows in `index` order (PPO shuffles; group-wise estimators must use rows() on whole groups)."""
        picked = index.tolist()
        return Rollout(
            self.sequences[index],
            self.attention_mask[index],
            self.action_mask[index],
            [self.prompts[i] for i in picked],
            [self.responses[i] for i in picked],
            self.group_size,
            None if self.logps is None else self.logps[index],
        )

    def to(self, device: torch.device) -> Rollout:
        return replace(
            self,
            sequences=self.sequences.to(device),
            attention_mask=self.attention_mask.to(device),
            action_mask=self.action_mask.to(device),
            logps=None if self.logps is None else self.logps.to(device),
        )


def encode_prompts_left_truncated(tokenizer, prompts: list[str], max_len: int) -> list[list[int]]:
    """Token ids of each prompt, keeping the last max_len tokens (the end is what the response follows)."""
    return [tokenizer(p, add_special_tokens=True)["input_ids"][-max_len:] for p in prompts]


def sample_rollout(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    group_size: int,
    params: SamplingParams,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
    **streams,
) -> Rollout:
    """N = group_size samples for each prompt from `model` (ancestral sampling with `params`), with the log-probs
    the model drew them with. `on_batch(rows)` after each generation call (progress). `streams`: generate()'s
    seed, first_prompt and others_running."""
    params = replace(params, num_samples=group_size)
    out = generate(
        model,
        tokenizer,
        prompt_ids,
        params,
        batch_size=batch_size,
        return_logprobs=True,
        on_batch=on_batch,
        **streams,
    )
    texts = tokenizer.batch_decode(prompt_ids, skip_special_tokens=False)
    prompts = [texts[i] for i in out.prompt_index.tolist()]
    return Rollout(
        out.sequences, out.attention_mask, out.response_mask, prompts, out.texts, group_size, out.response_logps
    )


def rollout_from_tokens(
    model, tokenizer, prompt_ids: list[list[int]], responses: list[list[list[int]]], group_size: int
) -> Rollout:
    """The Rollout of responses drawn elsewhere (a vLLM engine): `responses[p]` holds prompt p's `group_size`
    token-id lists. The layout is generate()'s (left-padded prompts, responses cut after their first EOS and
    padded) and the logps are `model`'s own, recomputed here: another engine's log-probs differ by kernel."""
    from repulse.data.collate import pad_sequences
    from repulse.generation.generate import encode_prompts, response_mask_from_ids

    if any(len(r) != group_size for r in responses) or len(responses) != len(prompt_ids):
        raise ValueError(f"expected {group_size} responses for each of {len(prompt_ids)} prompts")
    device = next(model.parameters()).device
    input_ids, prompt_mask = encode_prompts(tokenizer, prompt_ids)
    rows = [torch.as_tensor(r or [tokenizer.pad_token_id], dtype=torch.long) for group in responses for r in group]
    ids = pad_sequences(rows, tokenizer.pad_token_id)
    mask = response_mask_from_ids(ids, tokenizer.eos_token_id)
    mask &= pad_sequences([torch.ones(len(r), dtype=torch.bool) for group in responses for r in group], False)
    ids = ids.masked_fill(~mask, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(prompt_ids, skip_special_tokens=False)
    roll = Rollout(
        torch.cat([input_ids.repeat_interleave(group_size, 0), ids], 1).to(device),
        torch.cat([prompt_mask.repeat_interleave(group_size, 0), mask.long()], 1).to(device),
        mask.to(device),
        [texts[i] for i in range(len(prompt_ids)) for _ in range(group_size)],
        tokenizer.batch_decode(ids, skip_special_tokens=True),
        group_size,
    )
    return replace(roll, logps=response_token_logps(model, roll))


def response_logits(model, rollout: Rollout) -> torch.Tensor:
    """Logits that predict each response token -> [B, T, V] (with gradient if the caller wants one). Models that
    can skip the LM head on earlier positions compute it on the response window only: the head (and its softmax
    in the losses) is a large share of a pass when the vocabulary is large."""
    keep = logits_kwarg(model)(rollout.num_actions + 1)
    logits = forward_logits(model, rollout.sequences, rollout.attention_mask, **keep)
    return logits[:, -rollout.num_actions - 1 : -1]


def response_modulation(model, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p [B, T, V] of the proposal's base, detached; modulation m [B, T, V] with gradient) that predict each
    response token, for a modulated proposal q ∝ p e^m (models/modulated.py)."""
    out = model(
        input_ids=rollout.sequences,
        attention_mask=rollout.attention_mask,
        position_ids=position_ids_from_mask(rollout.attention_mask),
        use_cache=False,
    )
    window = slice(-rollout.num_actions - 1, -1)
    return out.base_logits[:, window], out.modulation[:, window]


def response_token_logps(model, rollout: Rollout, *, grad: bool = False) -> torch.Tensor:
    """log p(s_t | x, s_<t) for every response position -> [B, T]; padded positions are 0.

    Without `grad` the model runs in eval mode under no_grad: scoring never sees dropout (a departure from the
    reference code, which scored with modules in train mode).
    A model held by another process (a Ray worker's handle, distributed/ray/) scores there: it offers
    `remote_response_logps` instead of a forward.
    """
    remote = getattr(model, "remote_response_logps", None)
    if remote is not None and not grad:
        return remote(rollout)
    if grad:
        logits = response_logits(model, rollout)
    else:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = response_logits(model, rollout)
        model.train(was_training)
    logps = token_log_probs(logits, rollout.actions)
    return logps * rollout.action_mask
