"""AdamW over the trainable parameters and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from repulse.config.common import ScheduleArgs

NO_DECAY = ("bias", "norm", "ln_", "layernorm")


def build_optimizer(model: torch.nn.Module, optim: ScheduleArgs, lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights get no weight decay (the usual transformer recipe, as in OpenRLHF)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(k in name.lower() for k in NO_DECAY) else decay).append(param)
    groups = [{"params": decay, "weight_decay": optim.l2}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=optim.learning_rate if lr is None else lr, betas=tuple(optim.adam_betas)
    )


def build_scheduler(optimizer: torch.optim.Optimizer, optim: ScheduleArgs, total_steps: int):
    from transformers import get_scheduler

    kwargs = {"min_lr_rate": optim.min_lr_ratio} if optim.lr_scheduler == "cosine_with_min_lr" else None
    return get_scheduler(
        optim.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(total_steps * optim.lr_warmup_ratio),
        num_training_steps=max(total_steps, 1),
        scheduler_specific_kwargs=kwargs,
    )
