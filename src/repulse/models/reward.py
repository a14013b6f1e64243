"""Reward / critic models: a transformers sequence-regression model whose head is scored at the last token.

The head is looked up by `--value_head_prefix` (transformers names it `score` for GPT-2, Llama, Qwen ...).
Normalization statistics live in the model config (`normalize_reward`, `mean`, `std`) so that the saved folder
carries them to every consumer (train_ppo, serve_rm, batch_inference). `score_texts(path, texts)` /
`TextRewards.from_pretrained(path)` score texts from Python the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from repulse.config.common import LoraArgs, ModelArgs
from repulse.data.tokenize import encode_for_reward
from repulse.infra.errors import ModelLoadError, UserError
from repulse.models.load import check_loadable, first_line, model_load_kwargs
from repulse.models.logprobs import additive_mask, floating_dtype, position_ids_from_mask

log = logging.getLogger("repulse")


def load_reward_model(
    path: str,
    model_args: ModelArgs,
    lora: LoraArgs | None = None,
    *,
    value_head_prefix: str = "score",
    trainable: bool = False,
):
    """A sequence-regression model with one output. From a causal LM folder the head is new (seeded init)."""
    from transformers import AutoModelForSequenceClassification

    check_loadable(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **model_load_kwargs(model_args))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load a reward model from {path!r}: {first_line(err)}") from err
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    value_head(model, value_head_prefix)
    if not trainable:
        model.eval()
        model.requires_grad_(False)
        return model
    if model_args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None and lora.lora_rank > 0:
        from repulse.models.load import apply_lora

        model = apply_lora(model, lora, "SEQ_CLS")
        # The new head must train too; peft keeps a trainable copy of modules named in modules_to_save.
        for name, param in model.named_parameters():
            if f".{value_head_prefix}." in name and "modules_to_save" in name:
                param.requires_grad_(True)
    model.train()
    return model


def hf_model(model):
    """The transformers model under a peft / DDP wrapper (LoRA layers stay injected in it)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def value_head(model, prefix: str) -> torch.nn.Module:
    base = hf_model(model)
    head = getattr(base, prefix, None)
    if not isinstance(head, torch.nn.Module):
        names = [n for n, _ in base.named_children()]
        raise UserError(f"--value_head_prefix {prefix!r}: the model has no such module (it has {names})")
    return head


def token_values(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    value_head_prefix: str = "score",
    packing: str | None = None,
) -> torch.Tensor:
    """The head applied at every position -> [B, S] (a critic's per-token values); with `packing` ("4d" or
    "flash") right-padded rows run as one packed row (models/packing.py), the values returned padded."""
    if packing is None:
        return head_outputs(model, input_ids, attention_mask, value_head_prefix)
    from repulse.models.packing import pack_rows, unpack

    packed = pack_rows(input_ids, attention_mask, four_d_mask=packing == "4d")
    values = head_outputs(
        model, packed.input_ids, packed.attention_mask, value_head_prefix, position_ids=packed.position_ids
    )
    return unpack(values, packed.real)


def head_outputs(model, input_ids, attention_mask, value_head_prefix: str, **extra) -> torch.Tensor:
    """The value head at every position of one forward -> [B, S] (float)."""
    base = hf_model(model)
    if "position_ids" not in extra and attention_mask is not None and attention_mask.dim() == 2:
        extra["position_ids"] = position_ids_from_mask(attention_mask)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.dtype == torch.bool:
        attention_mask = additive_mask(attention_mask, floating_dtype(model))
    head = value_head(model, value_head_prefix)
    if strategy_wrapped(model):
        # A strategy's wrapper must run its own forward: DDP reduces gradients only for outputs of its forward,
        # and ZeRO-3 / FSDP2 gather their shards there. The head's output at every position is read off a hook.
        captured: list[torch.Tensor] = []
        handle = head.register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)
        finally:
            handle.remove()
        return captured[-1].squeeze(-1).float()
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).last_hidden_state
    return head(hidden).squeeze(-1).float()


def strategy_wrapped(model) -> bool:
    """Whether `model` is a DDP wrapper, a DeepSpeed engine (both hold `.module`) or an FSDP2-sharded module."""
    from torch.distributed.fsdp import FSDPModule

    return hasattr(model, "module") or isinstance(model, FSDPModule)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, for left or right padding -> [B]."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)


def sequence_rewards(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    value_head_prefix: str = "score",
    normalize: bool = True,
    packing: str | None = None,
) -> torch.Tensor:
    """One reward per row, read at its last real token -> [B]; normalised when the config says so. `packing`:
    token_values'."""
    values = token_values(model, input_ids, attention_mask, value_head_prefix, packing)
    rewards = values.gather(1, last_token_index(attention_mask).unsqueeze(1)).squeeze(1)
    config = hf_model(model).config
    if normalize and getattr(config, "normalize_reward", False):
        rewards = (rewards - config.mean) / config.std
    return rewards


def store_reward_normalization(model, mean: float, std: float) -> None:
    config = hf_model(model).config
    config.normalize_reward = True
    config.mean = float(mean)
    config.std = float(max(std, 1e-8))
    log.info("reward normalization stored in the config: mean %.4f std %.4f", config.mean, config.std)


class TextRewards:
    """A reward model as one callable: texts (prompt + response, already formatted) -> one reward each.

    Scores exactly as train_rm trained and train_ppo / batch_inference / serve_rm use the model: EOS appended,
    the reward read at that last token, and the mean/std stored by `train_rm --normalize_reward` applied. A
    plain transformers forward without the EOS, or without the normalization, gives other numbers.
    """

    def __init__(self, model, tokenizer, *, value_head_prefix: str = "score", batch_size: int = 32) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.value_head_prefix, self.batch_size = value_head_prefix, batch_size
        config = hf_model(model).config
        self.max_len = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    @classmethod
    def from_pretrained(
        cls, path: str, *, device: str | None = None, bf16: bool = False, value_head_prefix: str = "score"
    ) -> TextRewards:
        from repulse.models.load import load_tokenizer

        model = load_reward_model(path, ModelArgs(bf16=bf16), value_head_prefix=value_head_prefix)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device), load_tokenizer(path), value_head_prefix=value_head_prefix)

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        from repulse.data.collate import pad_sequences

        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = []
        seqs = encode_for_reward(self.tokenizer, texts, self.max_len)
        for start in range(0, len(seqs), self.batch_size):
            chunk = [torch.tensor(s, dtype=torch.long) for s in seqs[start : start + self.batch_size]]
            ids = pad_sequences(chunk, pad).to(device)
            mask = pad_sequences([torch.ones(len(s), dtype=torch.long) for s in chunk], 0).to(device)
            out.append(sequence_rewards(self.model, ids, mask, self.value_head_prefix).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


def score_texts(path: str, texts: Sequence[str], **kwargs) -> list[float]:
    """One call: the rewards a saved reward model (e.g. `runs/rm/final`) gives `texts`; see TextRewards."""
    return TextRewards.from_pretrained(path, **kwargs)(texts).tolist()
