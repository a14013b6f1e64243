"""The modulated proposal q(v | s_<t) ∝ p(v | s_<t) e^{m(v | s_<t)} (the "modulation" family of
docs/algorithms/twist.md).

`ModulatedLM(base, head, modulation_lm)` is called like a causal LM (`model(input_ids, attention_mask, position_ids,
past_key_values, use_cache)` -> `.logits`), so scoring (`response_log_probs`, `forward_logits`), the stepwise
sampler of `generation.generate` and exact enumeration use it unchanged. Its `.logits` are log p + m; the output
also carries `base_logits` (log p, detached) and `modulation` (m, with gradient) for the twist losses.

- `modulation_linear_head` / `modulation_nn_head`: m = head(h_L), h_L the base model's final hidden state.
- `modulation_model`: m = head(h_L') with h_L' from a separate, trainable copy of the LM; the head plays the part
  of that copy's replaced LM head.

The base is held but NOT registered as a submodule: q's `parameters()`, `state_dict()`, optimizer, `.to()` and
`.train()` then cover the head (and the modulation LM) only. In harmlessness training the base is the current
p_theta, which has its own optimizer; registering it would let the proposal optimizer move p_theta too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repulse.models.proposal import LinearModulationHead, MLPModulationHead, base_log_probs, is_modulation

CONFIG_FILE = "modulation.json"
HEAD_FILE = "modulation_head.safetensors"
LM_DIR = "modulation_lm"


@dataclass
class ModulatedOutput:
    """logits log p + m, base_logits log p (both [B, S, V], float32 for half-precision models), modulation m
    [B, S, V]; past_key_values a `ModulatedCache` when use_cache."""

    logits: torch.Tensor
    base_logits: torch.Tensor
    modulation: torch.Tensor
    past_key_values: ModulatedCache | None = None


class ModulatedCache:
    """The KV caches of the base and of the modulation LM, which must be extended and reordered together."""

    def __init__(self, base: Any, modulation: Any = None) -> None:
        self.base, self.modulation = base, modulation

    def batch_repeat_interleave(self, n: int) -> None:
        for cache in (self.base, self.modulation):
            if cache is not None:
                cache.batch_repeat_interleave(n)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.base.get_seq_length(layer_idx)


def output_layer_shape(base) -> tuple[int, int]:
    """(vocab size V, hidden size H) of the base model's LM head."""
    weight = base.get_output_embeddings().weight
    shape = getattr(weight, "ds_shape", weight.shape)  # a ZeRO-3 shard knows its full shape
    return int(shape[0]), int(shape[1])


def make_head(
    parameterization: str, hidden: int, vocab: int, sd_divider: float = 1.0, init_from: torch.Tensor | None = None
) -> nn.Module:
    """The head that maps a final hidden state to m: an MLP for modulation_nn_head, else a linear layer."""
    if not is_modulation(parameterization):
        raise ValueError(f"--parameterization {parameterization!r} is not a modulation parameterization")
    cls = MLPModulationHead if parameterization == "modulation_nn_head" else LinearModulationHead
    return cls(hidden, vocab, sd_divider, init_from)


class ModulatedLM(nn.Module):
    """q ∝ base · e^{head(h)}; h from the base (head variants) or from `modulation_lm` (modulation_model)."""

    def __init__(self, base, head: nn.Module, parameterization: str, modulation_lm=None) -> None:
        super().__init__()
        if (modulation_lm is not None) != (parameterization == "modulation_model"):
            raise ValueError("modulation_model needs a modulation LM; the head parameterizations must not get one")
        object.__setattr__(self, "base", base)  # unregistered on purpose: see the module docstring
        self.head = head
        self.modulation_lm = modulation_lm
        self.parameterization = parameterization

    @property
    def config(self):
        """The base model's config (vocab size, special tokens) for code that reads `model.config`."""
        return self.base.config

    def _base_forward(self, **inputs):
        # p is never trained through q (frozen p_0, or p_theta with its own optimizer), and is scored without
        # dropout, as every other scoring pass is.
        was_training = self.base.training
        self.base.eval()
        try:
            with torch.no_grad():
                return self.base(**inputs, output_hidden_states=self.modulation_lm is None)
        finally:
            self.base.train(was_training)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: ModulatedCache | None = None,
        use_cache: bool = False,
        **_: Any,
    ) -> ModulatedOutput:
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "use_cache": use_cache,
        }
        base_out = self._base_forward(**inputs, past_key_values=past_key_values.base if past_key_values else None)
        mod_out = None
        if self.modulation_lm is None:
            hidden = base_out.hidden_states[-1]
        else:
            mod_cache = past_key_values.modulation if past_key_values else None
            mod_out = self.modulation_lm(**inputs, past_key_values=mod_cache, output_hidden_states=True)
            hidden = mod_out.hidden_states[-1]
        modulation = self.head(hidden)
        base_logps = base_log_probs(base_out.logits)
        cache = None
        if use_cache:
            cache = ModulatedCache(base_out.past_key_values, mod_out.past_key_values if mod_out is not None else None)
        return ModulatedOutput(base_logps + modulation, base_logps, modulation, cache)

    def save_pretrained(
        self, path: str | Path, safe_serialization: bool = True, state_dict: dict | None = None, **_: Any
    ) -> None:
        """modulation.json + modulation_head.safetensors (+ modulation_lm/ in Hugging Face format); the base is
        saved by whoever owns it (final/ for p_theta) or is --pretrain itself (p_0). `state_dict`: q's full
        weights where the model holds only a shard of them (gathered by the strategy)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        vocab, hidden = output_layer_shape(self.base)
        info = {
            "parameterization": self.parameterization,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "base_model": getattr(self.base.config, "_name_or_path", None),
        }
        (path / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
        state = self.state_dict() if state_dict is None else state_dict
        head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
        save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, str(path / HEAD_FILE))
        if self.modulation_lm is not None:
            lm = {k.removeprefix("modulation_lm."): v for k, v in state.items() if k.startswith("modulation_lm.")}
            kwargs = {"state_dict": lm} if state_dict is not None else {}
            self.modulation_lm.save_pretrained(path / LM_DIR, safe_serialization=safe_serialization, **kwargs)


def is_modulated(model) -> bool:
    return isinstance(getattr(model, "module", model), ModulatedLM)


def load_modulated(path: str | Path, base, *, trainable: bool = False) -> ModulatedLM:
    """A proposal saved by `ModulatedLM.save_pretrained`, on top of `base` (which must be the model it modulated)."""
    from safetensors.torch import load_file

    path = Path(path)
    info = json.loads((path / CONFIG_FILE).read_text())
    if output_layer_shape(base) != (info["vocab_size"], info["hidden_size"]):
        raise ValueError(
            f"{path} modulates a model with vocab {info['vocab_size']} and hidden size "
            f"{info['hidden_size']}; the given base has {output_layer_shape(base)}"
        )
    head = make_head(info["parameterization"], info["hidden_size"], info["vocab_size"])
    head.load_state_dict(load_file(str(path / HEAD_FILE)))
    lm = None
    if info["parameterization"] == "modulation_model":
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(path / LM_DIR, dtype=base.get_output_embeddings().weight.dtype)
    weight = base.get_output_embeddings().weight
    model = ModulatedLM(base, head, info["parameterization"], lm).to(device=weight.device, dtype=weight.dtype)
    return set_trainable(model, trainable)


def build_modulated(
    parameterization: str,
    base,
    *,
    sd_divider: float = 1.0,
    init_head_from_base: bool = False,
    modulation_lm=None,
    trainable: bool = True,
) -> ModulatedLM:
    """A fresh proposal on `base`: Xavier-normal output layer / sd_divider, or the LM head of the base (or of the
    modulation LM) / sd_divider with init_head_from_base; zero bias."""
    body = modulation_lm if modulation_lm is not None else base
    weight = body.get_output_embeddings().weight
    vocab, hidden = output_layer_shape(body)
    init_from = weight.detach().float().cpu() if init_head_from_base else None
    head = make_head(parameterization, hidden, vocab, sd_divider, init_from).to(
        device=weight.device, dtype=weight.dtype
    )
    return set_trainable(ModulatedLM(base, head, parameterization, modulation_lm), trainable)


def set_trainable(model: ModulatedLM, trainable: bool) -> ModulatedLM:
    """Head (and modulation LM) trainable or frozen; train or eval mode to match."""
    model.requires_grad_(trainable)
    lm = model.modulation_lm
    if lm is not None and lm.get_output_embeddings().weight is not lm.get_input_embeddings().weight:
        # The copy's own LM head is replaced by `head` and would never get a gradient. A tied one is the input
        # embedding, which does train, so it is left alone.
        lm.get_output_embeddings().requires_grad_(False)
    return model.train(trainable)
