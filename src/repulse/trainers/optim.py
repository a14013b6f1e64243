"""AdamW over the trainable parameters and the learning-rate schedule."""

from __future__ import annotations

import logging
import math

import torch

from repulse.config.common import ScheduleArgs

log = logging.getLogger("repulse")

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
    """The learning-rate schedule over `total_steps` optimizer steps (warns when no step would learn)."""
    from transformers import get_scheduler

    kwargs = {"min_lr_rate": optim.min_lr_ratio} if optim.lr_scheduler == "cosine_with_min_lr" else None
    warmup = math.ceil(total_steps * optim.lr_warmup_ratio)
    scheduler = get_scheduler(
        optim.lr_scheduler,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=max(total_steps, 1),
        scheduler_specific_kwargs=kwargs,
    )
    if total_steps > 0 and not learns(scheduler, optimizer, total_steps, warmup):
        log.warning(
            "no optimizer step of this run has a non-zero learning rate: %d step(s), %d of them warm-up from 0 "
            "(--lr_warmup_ratio %g), so the weights will not change; give it more steps (more data or epochs, "
            "or a smaller --train_batch_size) or set --lr_warmup_ratio 0",
            total_steps,
            warmup,
            optim.lr_warmup_ratio,
        )
    return scheduler


def learns(scheduler, optimizer: torch.optim.Optimizer, total_steps: int, warmup: int) -> bool:
    """Whether some step k < total_steps has a learning rate > 0. Step k uses base_lr x lambda(k); after the
    warm-up every schedule here is positive at least once, so the first warmup + 2 steps decide."""
    base = max(group["initial_lr"] for group in optimizer.param_groups)
    factor = scheduler.lr_lambdas[0]
    return base > 0 and any(factor(k) > 0 for k in range(min(total_steps, warmup + 2)))
