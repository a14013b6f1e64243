"""Forward passes that return per-token log-probabilities of given tokens."""

from __future__ import annotations

import inspect

import torch

from repulse.losses.lm import token_log_probs


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def floating_dtype(model) -> torch.dtype:
    """The compute dtype: the first floating-point parameter's (4-bit weights are stored as integers)."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean 4-D mask (True = may attend) as 0 / -inf-like additive scores, which every attention
    implementation reads the same way (eager attention would add a boolean mask as +1)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def logits_kwarg(model):
    """`n -> {"logits_to_keep": n}` when the model can skip the LM head on earlier positions, else `{}`.

    For callers that read the logits of the last n positions only (attack targets, the next token when
    sampling): with a large vocabulary the head is a sizeable share of the compute.
    """
    accepts = "logits_to_keep" in inspect.signature(model.forward).parameters
    if accepts:
        contiguous_head_input(model)
    return (lambda n: {"logits_to_keep": n}) if accepts else (lambda n: {})


def contiguous_head_input(model) -> None:
    """Give the LM head a contiguous input (once per model; a no-op for inputs already contiguous).

    With `logits_to_keep`, transformers feeds the head a strided slice of the hidden states, and on CPU torch
    runs a linear layer on a strided 3-D input as a batched matmul that re-packs the weight for every row:
    3.4x slower than one matmul for SmolLM2's 49k-token head (a one-off timing; a third of a GCG step).
    """
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if head is None or getattr(head, "_repulse_contiguous_input", False):
        return
    head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))
    head._repulse_contiguous_input = True


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
    """Logits [B, S, V] with position ids that respect left padding (unless given, e.g. for packing)."""
    if "position_ids" not in extra and attention_mask is not None and attention_mask.dim() == 2:
        extra["position_ids"] = position_ids_from_mask(attention_mask)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.dtype == torch.bool:
        attention_mask = additive_mask(attention_mask, floating_dtype(model))
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).logits


def response_log_probs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_actions: int) -> torch.Tensor:
    """log p of the last `num_actions` tokens of each row given everything before them -> [B, num_actions]."""
    logits = forward_logits(model, input_ids, attention_mask)
    logps = token_log_probs(logits[:, :-1], input_ids[:, 1:])
    return logps[:, -num_actions:]


def response_token_mask(attention_mask: torch.Tensor, prompt_lens: torch.Tensor) -> torch.Tensor:
    """[B, S-1] mask over next-token positions whose target is a response token (right-padded rows)."""
    positions = torch.arange(1, attention_mask.shape[1], device=attention_mask.device)
    after_prompt = positions.unsqueeze(0) >= prompt_lens.to(attention_mask.device).unsqueeze(1)
    return after_prompt & attention_mask[:, 1:].bool()


def padded_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, packing: str | None = None):
    """Logits [B, S, V] of right-padded rows; with `packing` ("4d" or "flash", models/packing.py) the rows run
    as one packed row and the logits come back in the padded layout (zeros at padding)."""
    if packing is None:
        return forward_logits(model, input_ids, attention_mask)
    from repulse.models.packing import pack_rows, unpack

    packed = pack_rows(input_ids, attention_mask, four_d_mask=packing == "4d")
    logits = forward_logits(model, packed.input_ids, packed.attention_mask, position_ids=packed.position_ids)
    return unpack(logits, packed.real)


def sequence_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_lens: torch.Tensor,
    packing: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed response log-probs [B], response token count [B], logits [B, S, V]) for right-padded rows."""
    logits = padded_logits(model, input_ids, attention_mask, packing)
    mask = response_token_mask(attention_mask, prompt_lens)
    token_logps = token_log_probs(logits[:, :-1], input_ids[:, 1:])
    return (token_logps * mask).sum(-1), mask.sum(-1), logits
